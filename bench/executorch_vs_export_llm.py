"""omnic's ExecuTorch .pte against the .pte ExecuTorch's own LLM exporter (export_llm) makes from
the same checkpoint at the same quantization, and llama.cpp's Q4_0 of it (issue 19).

    PYTHONPATH=. .venv/bin/python bench/executorch_vs_export_llm.py [--work /tmp/et-vs-export-llm] \
        [--context 1024] [--threads 1] [--rounds 5] [--prompt 128] [--decode 64] [--repeat 3] \
        [--skip-omnic-build | --omnic-build DIR] [--hf DIR] [--sdist llama_cpp_python-*.tar.gz]

The checkpoint is the real SmolLM2-135M-Instruct, its fp32 Hugging Face directory as `make test`
caches it (real_quality.py `cached_hf`), or --hf. export_llm is installed in omnic's own venv
(the executorch 1.5.1 omnic lowers with): one ExecuTorch makes and runs both .pte files, and no
second environment is needed.

1. export_llm: the HF safetensors converted to the Meta checkpoint its llama_transformer reads
   (examples/models/smollm2/convert_weights.py needs torchtune, not installed: the same names,
   HF's rotate-half permutation of the q/k rows undone), checked by the eager Meta model's logits
   against transformers'; then `python -m executorch.extension.llm.export.export_llm --config`
   with `peer_config` (8da4w group 32, embedding "8,0", XNNPACK, the rest at its defaults).
2. omnic: `omnic import HF --quant int4_g32 --targets executorch`, golden 2 x (16 + 8), compile.
3. llama.cpp: convert_hf_to_gguf.py + Q4_0 (real_quality.py `llama_cpp_files`).
4. Each file in a fresh process per round, rounds interleaved, same threads: prefill tok/s of a
   --prompt prompt, decode tok/s of --decode greedy steps, the worker's peak RSS
   (bench/harness.py: its `pte` worker on ExecuTorch's Python runtime for both .pte files,
   `llama` for the GGUF); and, as a cheap quality check, 16 greedy tokens of a fixed prompt
   beside transformers' fp32 ones.

Each step is cached in --work (a rerun skips what is done); report.md and results.json are
written there. Not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import harness as h  # noqa: E402
from real_quality import cached_hf, llama_cpp_files  # noqa: E402

PROMPT = "The capital of France is Paris. The capital of Germany is"
GREEDY = 16
EXPORT_LLM = "executorch.extension.llm.export.export_llm"

# HF name -> Meta name: torchtune's _FROM_HF composed with the smollm2 example's table.
# ref: executorch/examples/models/smollm2/convert_weights.py (_SMOLLM_FROM_META)
# ref: https://github.com/pytorch/torchtune/blob/main/torchtune/models/convert_weights.py
HF_TO_META = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
}


def meta_params(hf: Path) -> dict:
    """The params JSON of examples/models/smollm2/135M_config.json, numbers read off config.json
    (transformers 5 moved rope_theta into rope_parameters)."""
    c = json.loads((hf / "config.json").read_text())
    theta = c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta", 10000.0)
    params = {"dim": c["hidden_size"], "ffn_dim_multiplier": 1,
              "hidden_dim": c["intermediate_size"], "n_heads": c["num_attention_heads"],
              "n_kv_heads": c["num_key_value_heads"], "n_layers": c["num_hidden_layers"],
              "norm_eps": c["rms_norm_eps"], "rope_theta": theta, "use_scaled_rope": False,
              "vocab_size": c["vocab_size"], "use_hf_rope": False,
              "attention_qkv_bias": c.get("attention_bias", False)}
    if c.get("head_dim", params["dim"] // params["n_heads"]) != params["dim"] // params["n_heads"]:
        params["head_dim"] = c["head_dim"]
    return params


def convert_checkpoint(hf: Path, out: Path, ids: list[int]) -> dict:
    """(child) HF safetensors -> Meta .pth at `out`; the eager Meta model's logits on `ids`
    against transformers', and transformers' fp32 greedy tokens (the quality reference)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs

    p = meta_params(hf)
    head_dim = p.get("head_dim", p["dim"] // p["n_heads"])

    def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
        # HF's convert_llama_weights_to_hf.py permutes each head's rows from Meta's interleaved
        # RoPE pairs to rotate-half order: view(h, hd//2, 2, d).transpose(1, 2). This is its
        # exact inverse (torchtune's hf_to_tune `_permute`), for use_hf_rope: false.
        return w.view(heads, 2, head_dim // 2, p["dim"]).transpose(1, 2).reshape(-1, p["dim"])

    patterns = [(re.compile("^" + re.escape(k).replace(r"\{\}", r"(\d+)") + "$"), v)
                for k, v in HF_TO_META.items()]
    sd = {}
    for name, w in load_file(str(hf / "model.safetensors")).items():
        meta = next((v.format(*m.groups()) for r, v in patterns if (m := r.match(name))), None)
        if meta is None:
            raise SystemExit(f"no Meta name for {name}")
        if name.endswith("q_proj.weight"):
            w = unpermute(w, p["n_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, p["n_kv_heads"])
        sd[meta] = w.contiguous()
    sd.setdefault("output.weight", sd["tok_embeddings.weight"])  # tied, as the example does
    torch.save(sd, out)

    tokens = torch.tensor([ids])
    eager = construct_transformer(ModelArgs(**p, max_seq_len=64, max_context_len=64,
                                            use_kv_cache=False, generate_full_logits=True))
    missing, _ = eager.load_state_dict(sd, strict=False)
    if [m for m in missing if m.endswith(".weight")]:
        raise SystemExit(f"Meta model misses {missing}")
    ref = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        got, want = eager.eval()(tokens)[0], ref(tokens).logits[0]
        greedy = list(ids)
        for _ in range(GREEDY):  # no cache: a few dozen tokens
            greedy.append(int(ref(torch.tensor([greedy])).logits[0, -1].argmax()))
    return {"eager_max_abs_logit_diff": float((got - want).abs().max()),
            "eager_argmax_agree": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
            "hf_greedy": greedy[len(ids):]}


def greedy(path: Path, ids: list[int], threads: int) -> list[int]:
    """(child) `GREEDY` greedy tokens of one file after the prompt `ids`."""
    if path.suffix == ".gguf":
        from omnic.targets.gguf.runtime import LlamaCppRunner

        runner = LlamaCppRunner(str(path), n_ctx=len(ids) + GREEDY + 8, n_threads=threads)
    else:
        runner = h.PteRunner(path, threads)
    out = [int(np.argmax(runner.forward(np.array(ids))[-1]))]
    while len(out) < GREEDY:
        out.append(int(np.argmax(runner.forward(np.array(out[-1:]))[-1])))
    return out


def pte_calls(path: Path) -> dict[str, int]:
    """(child) Instructions of a .pte's forward plan: delegate calls per backend, and every
    kernel called outside a delegate, per operator."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    plan = next(p for p in deserialize_pte_binary(path.read_bytes()).program.execution_plan
                if p.name == "forward")
    calls: Counter[str] = Counter()
    for chain in plan.chains:
        for ins in chain.instructions:
            a = ins.instr_args
            if isinstance(a, DelegateCall):
                calls[f"delegate {plan.delegates[a.delegate_index].id}"] += 1
            elif isinstance(a, KernelCall):
                op = plan.operators[a.op_index]
                calls[op.name + (f".{op.overload}" if op.overload else "")] += 1
    return dict(calls.most_common())


def child(step: str, *args: str, env: dict[str, str], log: Path) -> object:
    """Run one of the (child) functions above in its own process (torch never loads here)."""
    out = log.with_suffix(".out.json")
    run = h.run_measured([h.PY, __file__, "--child", step, *args, "--child-out", str(out)],
                         env=env, log=log)
    if run["returncode"]:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise SystemExit(f"{step} failed (exit {run['returncode']}):\n" + "\n".join(tail))
    return json.loads(out.read_text())


def cached(record: Path, make) -> dict:  # noqa: ANN001
    """`make()`'s record (with its wall `seconds`), made once: a rerun reads it from `record`."""
    if not record.is_file():
        t0 = time.perf_counter()
        out = make()
        record.write_text(json.dumps({"seconds": time.perf_counter() - t0, **out}, indent=1))
    return json.loads(record.read_text())


def file_key(path: Path) -> str:  # one version of a file, for the names of its cached records
    return f"{path.stem}-{path.stat().st_size}-{int(path.stat().st_mtime)}"


def peer_config(a: argparse.Namespace, ckpt: Path, params: Path, pte: Path) -> dict:
    """export_llm's LlmConfig (extension/llm/export/config/llm_config.py), as its
    examples/models/llama/config/llama_xnnpack.yaml sets it, at this comparison's quantization."""
    return {
        "base": {"model_class": "smollm2", "checkpoint": str(ckpt), "params": str(params),
                 "metadata": json.dumps({"get_bos_id": 1, "get_eos_ids": [2]})},
        "model": {"use_kv_cache": True, "use_sdpa_with_kv_cache": True, "dtype_override": "fp32",
                  "enable_dynamic_shape": True},
        "export": {"max_seq_length": a.context, "max_context_length": a.context,
                   "output_dir": str(pte.parent), "output_name": str(pte)},
        "quantization": {"qmode": "8da4w", "group_size": 32, "embedding_quantize": "8,0"},
        "backend": {"xnnpack": {"enabled": True, "extended_ops": True}},
    }


def export_llm(a: argparse.Namespace, hf: Path, ids: list[int], env: dict) -> tuple[Path, dict]:
    """Step 1: the Meta checkpoint (work/meta), then export_llm's .pte (work/export_llm-cN)."""
    import yaml

    meta, peer = a.work / "meta", a.work / f"export_llm-c{a.context}"
    meta.mkdir(exist_ok=True)
    peer.mkdir(exist_ok=True)
    ckpt, params, pte = meta / "smollm2_meta.pth", meta / "params.json", peer / "export_llm.pte"
    # model.py takes a checkpoint whose path says "int8" or "8da4w" for a pre-quantized one
    if re.search("int8|8da4w", str(ckpt)):
        raise SystemExit(f"--work must not contain 'int8' or '8da4w' (export_llm reads {ckpt})")
    params.write_text(json.dumps(meta_params(hf), indent=1))
    conv = cached(meta / "convert.json", lambda: child(
        "convert", str(hf), str(ckpt), json.dumps(ids), env=env, log=meta / "convert.log"))
    config, options = peer / "llm_config.yaml", peer_config(a, ckpt, params, pte)
    config.write_text(yaml.safe_dump(options, sort_keys=False))

    def run() -> dict:
        r = h.run_measured([h.PY, "-m", EXPORT_LLM, "--config", str(config)], env=env, cwd=peer,
                           log=peer / "export_llm.log")
        if r["returncode"] or not pte.is_file():
            raise SystemExit(f"export_llm failed, see {r['log']}")
        return r

    return pte, {**cached(peer / "export_llm.json", run), "convert": conv, "options": options}


def omnic_build(a: argparse.Namespace, hf: Path, env: dict) -> tuple[Path, dict]:
    """Step 2: omnic's int4_g32 .pte: the build given by --omnic-build, else work/omnic-cN
    (compiled unless there, or --skip-omnic-build)."""
    import yaml

    build = a.omnic_build or a.work / f"omnic-c{a.context}"
    record = a.work / f"omnic-c{a.context}.json"
    failed = build.with_name(build.name + ".failed")  # a failed golden check keeps it there
    if not (a.omnic_build or a.skip_omnic_build or (build / "manifest.json").is_file()
            or (failed / "manifest.json").is_file()):
        spec = a.work / f"smollm2-c{a.context}.yaml"
        subprocess.run([h.PY, "-m", "omnic.cli.main", "import", str(hf), "-o", str(spec),
                        "--context-length", str(a.context), "--quant", "int4_g32",
                        "--targets", "executorch"], check=True, env=env)
        data = yaml.safe_load(spec.read_text())
        data["golden"] = {"cases": 2, "prompt_tokens": 16, "decode_steps": 8}
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
        r = h.run_measured([h.PY, "-m", "omnic.cli.main", "compile", str(spec), "-o", str(build),
                            "--force"], env=env, log=record.with_suffix(".log"))
        record.write_text(json.dumps(r))
    run = json.loads(record.read_text()) if record.is_file() and not a.omnic_build else {}
    if not (build / "manifest.json").is_file() and (failed / "manifest.json").is_file():
        build = failed  # still measured, its status reported
    if not (build / "manifest.json").is_file():
        raise SystemExit(f"no omnic build in {build}" + (f", see {run['log']}" if run else ""))
    manifest = json.loads((build / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"]
                 if e["target"] == "executorch" and e["component"] == "decoder")
    forms = Counter(entry.get("quantization", {}).get("forms", {}).values())
    return build / entry["path"], {**run, "status": manifest["status"], "forms": dict(forms),
                                   "golden": entry["golden"]["status"]}


def summarize(results: list[dict], prompt: int, decode: int) -> dict:
    """Median and 10th percentile (the slow tail) over every timed run of every round."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"error": results[0]["error"] if results else "not measured"}
    pre = [prompt / p for r in ok for p, _ in r["runs"]]
    dec = [decode / d for r in ok for _, d in r["runs"]]
    return {"decode_median": float(np.median(dec)), "decode_p10": float(np.percentile(dec, 10)),
            "decode_fast10": float(np.median([r["decode_tok_s_p10"] for r in ok])),
            "prefill_median": float(np.median(pre)), "prefill_p10": float(np.percentile(pre, 10)),
            "peak_rss_mb": max(r["worker_peak_rss_mb"] for r in ok),
            "load_s": float(np.median([r["load_s"] for r in ok])), "runs": len(dec)}


def report(files: dict, stats: dict, builds: dict, match: dict, notes: list[str]) -> str:
    """The Markdown report: one row per file, the ratios, then the notes."""
    def f(v: float | None, d: int = 1) -> str:
        return "—" if v is None else f"{v:.{d}f}"

    mib = {n: path.stat().st_size / 2**20 for n, (path, _) in files.items()}
    lines = ["| artifact | MiB | decode tok/s | decode p10 | decode fastest-10 % steps | "
             "prefill tok/s | prefill p10 | worker peak RSS MiB | load s | greedy = fp32 | "
             "build s |", "|" + "---|" * 11]
    for name in files:
        s, m, b = stats[name], match[name], builds[name]
        build = f(b.get("seconds"), 0) + (f" (golden {b['golden']})" if "golden" in b else "")
        cells = (["error: " + s["error"]] + [""] * 7 if "error" in s else [
            f(s["decode_median"]), f(s["decode_p10"]), f(s["decode_fast10"]),
            f(s["prefill_median"]), f(s["prefill_p10"]), f(s["peak_rss_mb"], 0),
            f(s["load_s"], 2)])
        lines.append(f"| {name} | {f(mib[name])} | " + " | ".join(cells)
                     + f" | {m['same']}/{GREEDY} (prefix {m['prefix']}) | {build} |")
    keys = ("decode_median", "decode_p10", "prefill_median", "prefill_p10")
    lines += ["", "| ratio | decode | decode p10 | prefill | prefill p10 | MiB |", "|" + "---|" * 6]
    for peer in ("export_llm", "llama.cpp Q4_0"):
        x, y = stats["omnic"], stats[peer]
        cells = ["—" if "error" in x or "error" in y else f"{x[k] / y[k]:.2f}x" for k in keys]
        lines.append(f"| omnic / {peer} | " + " | ".join(cells)
                     + f" | {mib['omnic'] / mib[peer]:.2f}x |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def calls_note(name: str, calls: dict[str, int]) -> str:
    ops = {k: v for k, v in calls.items() if not k.startswith("delegate")}
    delegated = sum(v for k, v in calls.items() if k.startswith("delegate"))
    return (f"{name} forward plan: {delegated} delegate calls, {sum(ops.values())} kernel calls "
            f"outside them: " + ", ".join(f"{k} {v}" for k, v in ops.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/et-vs-export-llm"))
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of all files")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per worker (+1 warm-up)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--skip-omnic-build", action="store_true",
                   help="never compile: measure the build already in --work")
    p.add_argument("--omnic-build", type=Path, help="an omnic build directory to measure")
    p.add_argument("--hf", type=Path, help="the fp32 Hugging Face directory of the checkpoint")
    p.add_argument("--sdist", type=Path, help="a llama_cpp_python-0.3.36.tar.gz already here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a, rest = p.parse_known_args()
    if a.child:  # one step of this script in its own process
        steps = {"convert": lambda: convert_checkpoint(Path(rest[0]), Path(rest[1]),
                                                       json.loads(rest[2])),
                 "greedy": lambda: greedy(Path(rest[0]), json.loads(rest[1]), int(rest[2])),
                 "calls": lambda: pte_calls(Path(rest[0]))}
        a.child_out.write_text(json.dumps(steps[a.child]()))
        return 0
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    hf = (a.hf or cached_hf()).resolve()
    env = h.thread_env(a.threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    ids, load_start = tok.encode(PROMPT).ids, h.load_average()

    peer_pte, peer_run = export_llm(a, hf, ids, env)
    omnic_pte, omnic_run = omnic_build(a, hf, env)

    def llama() -> dict:
        q4 = llama_cpp_files(SimpleNamespace(work=a.work, sdist=a.sdist, no_kquants=True,
                                             threads=a.threads, llama_tools=None), hf, env)
        return {"path": str(next(iter(q4.values())))}

    llama_run = cached(a.work / "llama_cpp.json", llama)
    files = {"omnic": (omnic_pte, "pte"), "export_llm": (peer_pte, "pte"),
             "llama.cpp Q4_0": (Path(llama_run["path"]), "llama")}
    builds = {"omnic": omnic_run, "export_llm": peer_run, "llama.cpp Q4_0": llama_run}

    ref = peer_run["convert"]["hf_greedy"]
    match = {}
    for name, (path, _) in files.items():
        got = cached(a.work / f"greedy-{file_key(path)}.json", lambda path=path: {"tokens": child(
            "greedy", str(path), json.dumps(ids), str(a.threads), env=env,
            log=a.work / "greedy.log")})["tokens"]
        same = [x == y for x, y in zip(got, ref)]
        match[name] = {"tokens": got, "same": sum(same),
                       "prefix": same.index(False) if False in same else len(same)}
    calls = {n: cached(a.work / f"calls-{file_key(path)}.json", lambda path=path: {"calls": child(
        "calls", str(path), env=env, log=a.work / "calls.log")})["calls"]
        for n, (path, kind) in files.items() if kind == "pte"}

    results: dict[str, list[dict]] = {n: [] for n in files}
    for r in range(a.rounds):
        for name, (path, kind) in files.items():
            res = h.measure_in_worker(kind, path, a.threads, a.prompt, a.decode, a.repeat,
                                      meta_params(hf)["vocab_size"])
            results[name].append(res)
            print(f"round {r + 1}/{a.rounds} {name}: " + (res["error"] if "error" in res else
                  f"decode {res['decode_tok_s']:.1f} tok/s, prefill {res['prefill_tok_s']:.1f}"
                  f" tok/s, load {res['load_average']}"), file=sys.stderr)
    stats = {n: summarize(v, a.prompt, a.decode) for n, v in results.items()}

    conv, llama_settings = peer_run["convert"], next(
        (r["settings"] for r in results["llama.cpp Q4_0"] if "settings" in r), {})
    notes = [
        f"SmolLM2-135M-Instruct ({hf.name}); {a.threads} thread(s) everywhere; prompt "
        f"{a.prompt} random ids, {a.decode} greedy steps; {a.rounds} interleaved rounds x "
        f"{a.repeat} timed runs (+1 warm-up) per fresh worker; context {a.context} (.pte), "
        "n_ctx 512 (llama.cpp); load average at start / end: "
        f"{load_start} / {h.load_average()}",
        "tok/s: median over all timed runs; p10: their 10th percentile (90 % of runs were "
        "faster); fastest-10 % steps: the decode speed of the fastest tenth of single-token "
        "steps (bench/harness.py's uncontended estimate), median over rounds",
        "both .pte on the same runner, ExecuTorch's Python runtime (bench/harness.py PteRunner, "
        f"threadpool reset to {a.threads}); llama.cpp by llama-cpp-python's Llama.eval "
        f"({json.dumps(llama_settings)})",
        "export_llm options: model_class smollm2, " + json.dumps(
            {k: v for k, v in peer_run["options"].items() if k not in ("base", "export")})
        + f", max_seq_length = max_context_length = {a.context}; HQQ scales (its default); "
        "its 8da4w takes the output projection too "
        f"(int4 g32, beside the int8 embedding); omnic's forms: {json.dumps(omnic_run['forms'])}",
        f"conversion check: the eager Meta model vs transformers fp32 on the {len(ids)}-token "
        f"prompt: max |logit diff| {conv['eager_max_abs_logit_diff']:.2e}, argmax agreement "
        f"{100 * conv['eager_argmax_agree']:.0f} %",
        f"greedy = fp32: of {GREEDY} greedy tokens after {PROMPT!r}, how many equal "
        "transformers' fp32 ones (prefix: before the first difference); fp32: "
        + json.dumps(tok.decode(ref)),
        *[f"greedy {n}: {json.dumps(tok.decode(m['tokens']))}" for n, m in match.items()],
        f"builds: omnic compile {omnic_run.get('seconds', float('nan')):.0f} s (its golden check "
        f"included; status {omnic_run['status']}), peak {omnic_run.get('peak_rss_mb', 0):.0f} "
        f"MiB; checkpoint conversion {conv['seconds']:.0f} s + export_llm "
        f"{peer_run['seconds']:.0f} s, peak {peer_run['peak_rss_mb']:.0f} MiB; llama.cpp "
        f"convert + quantize {llama_run['seconds']:.0f} s",
        *[calls_note(n, c) for n, c in calls.items()],
    ]
    text = report(files, stats, builds, match, notes)
    (a.work / "report.md").write_text(text)
    (a.work / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(a).items()}, "stats": stats, "results": results,
         "builds": builds, "greedy": {"reference": ref, **match}, "calls": calls}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
