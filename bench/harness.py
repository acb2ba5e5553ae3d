"""Shared parts of the comparison scripts in bench/ (not a test, not part of the package).

- `make_checkpoint`: a random Hugging Face checkpoint of a known shape, saved locally, with
  omnic's byte tokenizer written as tokenizer.json (no download anywhere);
- `run_measured`: a child process's wall time and its own peak RSS (VmHWM, polled);
- `measure_in_worker`: decode timing of one model in a fresh process, by one of the harnesses
  below, the same harness for both tools' files:
    og     onnxruntime-genai Generator (the runtime both ONNX folders are made for)
    ort    a plain onnxruntime session fed like omnic's OnnxRunner (inputs read off the graph)
    llama  llama-cpp-python's Llama.eval (last-position logits only)
    pte    ExecuTorch's Python runtime over a .pte LLM program (omnic's or export_llm's)
    tvm    omnic's TvmRunner (Relax VM) over an omnic <name>-tvm/ directory
  Each run: prefill P random token ids, then D greedy single-token steps; median over R runs
  after one warm-up; the thread count goes to the runtime's own option.

    python bench/harness.py --worker og|ort|llama|pte|tvm PATH --threads N --prompt P --decode D
        --repeat R --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# Shapes of public checkpoints (config.json numbers), random weights.
# ref: https://huggingface.co/HuggingFaceTB/SmolLM-135M/blob/main/config.json
# ref: https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {  # a smoke test of the scripts themselves, seconds per step
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
        "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    },
    "smollm_135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    },
    # ref: https://huggingface.co/HuggingFaceTB/SmolLM-360M/blob/main/config.json
    "smollm_360m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 960,
        "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
        "num_key_value_heads": 5, "vocab_size": 49152, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    },
    # LFM2-350M: 10 short-convolution layers and 6 attention layers (issue 17's hybrid)
    # ref: https://huggingface.co/LiquidAI/LFM2-350M/blob/main/config.json
    "lfm2_350m": {
        "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "hidden_size": 1024,
        "intermediate_size": 6656, "num_hidden_layers": 16, "num_attention_heads": 16,
        "num_key_value_heads": 8, "vocab_size": 65536, "norm_eps": 1e-5, "rope_theta": 1e6,
        "conv_L_cache": 3, "block_auto_adjust_ff_dim": True, "tie_word_embeddings": True,
        "full_attn_idxs": [2, 5, 8, 10, 12, 14],
    },
    # granite-4.0-h-350m: 28 Mamba-2 layers and 4 NoPE attention layers (issue 17's hybrid)
    # (values of presets/models/granite4.0_h_350m.yaml)
    "granite4.0_h_350m": {
        "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
        "hidden_size": 768, "intermediate_size": 2048, "shared_intermediate_size": 2048,
        "num_hidden_layers": 32, "num_attention_heads": 12, "num_key_value_heads": 4,
        "vocab_size": 100352, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "num_local_experts": 0, "position_embedding_type": "nope", "mamba_n_heads": 48,
        "mamba_d_head": 32, "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4,
        "mamba_expand": 2, "mamba_chunk_size": 256, "embedding_multiplier": 12.0,
        "residual_multiplier": 0.246, "attention_multiplier": 0.015625, "logits_scaling": 3.0,
        "layer_types": ["attention" if i in (10, 13, 17, 27) else "mamba" for i in range(32)],
    },
    # Qwen3.5-0.8B's text decoder: 18 Gated DeltaNet layers and 6 gated attention layers (issue
    # 17's hybrid; values of presets/models/qwen3.5_0.8b.yaml)
    "qwen3.5_0.8b": {
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
        "vocab_size": 248320, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e7,
                            "partial_rotary_factor": 0.25},
    },
    # ref: https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    "llama3.2_1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    },
    "qwen2.5_0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    },
}


def make_checkpoint(shape: str, out: Path, context: int = 2048, seed: int = 0) -> dict[str, Any]:
    """A random checkpoint of `shape` in `out` (fp32 safetensors + byte tokenizer.json), made in
    a child process so that this one stays small (torch and the model never load here)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import harness; "
            "print(json.dumps(harness._make_checkpoint(sys.argv[2], harness.Path(sys.argv[3]), "
            "int(sys.argv[4]), int(sys.argv[5]))))")
    res = subprocess.run([PY, "-c", code, str(Path(__file__).parent), shape, str(out),
                          str(context), str(seed)], env=thread_env(os.cpu_count() or 1),
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _make_checkpoint(shape: str, out: Path, context: int, seed: int) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = dict(SHAPES[shape], max_position_embeddings=context, bos_token_id=256,
                    eos_token_id=257, pad_token_id=258)
    out.mkdir(parents=True, exist_ok=True)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    write_byte_tokenizer(out, config.vocab_size)
    params = sum(p.numel() for p in model.parameters())  # tied: counted once
    return {"shape": shape, "parameters": params, "fp32_bytes": 4 * params,
            "dir": str(out), "context": context}


def write_byte_tokenizer(out: Path, vocab_size: int) -> None:
    """tokenizer.json + tokenizer_config.json of a SentencePiece-style byte tokenizer: BPE with
    no merges and byte fallback, tokens <0x00>..<0xFF>, <s>, </s>, <pad>, <unused_N>.

    Not omnic's own byte tokenizer file (a GPT-2 byte-level BPE without merges): llama.cpp's
    converter knows no pre-tokenizer hash for that one, and writes a vocabulary llama.cpp then
    refuses to load. This form goes through the converter's Llama (SPM) path and is read by
    transformers, the onnxruntime-genai builder and `omnic import` alike.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from tokenizers.models import BPE

    names = [f"<0x{b:02X}>" for b in range(256)] + ["<s>", "</s>", "<pad>"]
    names += [f"<unused_{i}>" for i in range(vocab_size - len(names))]
    tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(names)}, merges=[], byte_fallback=True,
                        fuse_unk=False))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names[256:]])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 256)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False}, indent=2))


# -- processes -----------------------------------------------------------------------------------


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 log: Path | None = None) -> dict[str, Any]:
    """Run `cmd`; its wall seconds, its own peak RSS (MiB) and exit status.

    The peak is the child's VmHWM, polled every 20 ms (the high-water mark of its own address
    space since exec). wait4's ru_maxrss is not used: on Linux it also counts the parent's RSS
    at fork time, so every child of a 500 MiB parent would report at least 500 MiB.
    """
    import threading

    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    peak = [0.0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            value = _vm_hwm_mb(proc.pid)
            if value is not None:
                peak[0] = max(peak[0], value)
            done.wait(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    proc.wait()
    done.set()
    poller.join()
    seconds = time.perf_counter() - start
    if log:
        out.close()
    return {"seconds": seconds, "peak_rss_mb": peak[0], "returncode": proc.returncode,
            "cmd": " ".join(map(str, cmd)), "log": str(log) if log else None}


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMNIC_THREADS", "TVM_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def measure_in_worker(kind: str, path: Path, threads: int, prompt: int, decode: int,
                      repeat: int, vocab: int) -> dict[str, Any]:
    """Decode timing of `path` by harness `kind` in a fresh process (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        run = run_measured([PY, __file__, "--worker", kind, str(path), "--threads", str(threads),
                            "--prompt", str(prompt), "--decode", str(decode), "--repeat",
                            str(repeat), "--vocab", str(vocab), "--out", str(out)],
                           env=thread_env(threads), log=Path(tmp) / "log.txt")
        if not out.is_file():
            tail = (Path(tmp) / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
            return {"error": f"exit {run['returncode']}: " + " | ".join(tail), **run}
        return {**json.loads(out.read_text()), "worker_peak_rss_mb": run["peak_rss_mb"]}


def dir_bytes(path: Path, suffixes: tuple[str, ...] | None = None) -> int:
    """Bytes of a file, or of a folder's files (only those ending with `suffixes` if given)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.is_file() and (suffixes is None or p.name.endswith(suffixes)))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_table(title: str, columns: list[str], rows: list[list[Any]], notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, caption="\n".join(notes), caption_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*["—" if v is None else str(v) for v in r])
    Console(width=max(120, Console().width)).print(t)


# -- workers (run in their own process) ----------------------------------------------------------


def _og_timer(folder: Path, threads: int, vocab: int):
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads}}}}))
    start = time.perf_counter()
    model = og.Model(cfg)
    load_s = time.perf_counter() - start

    def one(prompt: np.ndarray, decode: int) -> tuple[float, float]:
        params = og.GeneratorParams(model)
        n = len(prompt) + decode + 1
        # min_length = max_length: a random model must not stop early at its end token
        params.set_search_options(max_length=n, min_length=n, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt.astype(np.int32))  # the prompt's forward pass
        prefill = time.perf_counter() - t0
        gen.generate_next_token()  # picks the first token from the prefill logits (no forward)
        steps = []
        for _ in range(decode):  # each: one forward of the previous token, then argmax
            t1 = _clock()
            gen.generate_next_token()
            steps.append(_since(t1))
        return prefill, steps

    return load_s, one, {"onnxruntime-genai intra_op_num_threads": threads}


class OrtKvRunner:
    """A plain onnxruntime session over a decoder ONNX with past_key_values inputs (the
    onnxruntime-genai builder's model.onnx, or omnic's), fed like omnic's OnnxRunner: inputs
    read off the graph. The Runner protocol of omnic.targets.base: `reset()`, then
    `forward(tokens [T]) -> logits [T, vocab]` with the cache carried between calls."""

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort

        model = folder / "model.onnx" if folder.is_dir() else folder
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        start = time.perf_counter()
        self.sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - start
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        past = {n: i for n, i in self.inputs.items() if n.startswith("past_key_values.")}
        self.ids_dtype = np.int32 if "int32" in self.inputs["input_ids"].type else np.int64
        # symbolic cache dims (the builder writes 'kv_cache_dim'): from genai_config.json
        dec = json.loads((model.parent / "genai_config.json").read_text())["model"]["decoder"]
        known = {1: dec["num_key_value_heads"], 3: dec["head_size"]}

        def dim(shape: list, axis: int) -> int:
            return shape[axis] if isinstance(shape[axis], int) else known[axis]

        self.empty = {n: np.zeros((1, dim(i.shape, 1), 0, dim(i.shape, 3)),
                                  dtype=np.float16 if "float16" in i.type else np.float32)
                      for n, i in past.items()}
        from omnic.targets.onnx.window_cache import empty_cache, window_cache

        if window_cache(self.sess.get_modelmeta().custom_metadata_map):  # omnic's window caches
            self.empty = empty_cache(self.sess)
        self.reset()

    def reset(self) -> None:
        self.cache, self.position = dict(self.empty), 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        ids = np.asarray(tokens).reshape(-1)
        t, pos = ids.shape[0], self.position
        feed = {"input_ids": ids.astype(self.ids_dtype)[None], **self.cache}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, pos + t), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(pos, pos + t, dtype=np.int64)[None]
        res = dict(zip(self.outputs, self.sess.run(self.outputs, feed)))
        self.cache = {n: res[n.replace("past_key_values.", "present.")] for n in self.cache}
        self.position += t
        return res["logits"][0].astype(np.float32)


class PteRunner:
    """A .pte LLM program on ExecuTorch's Python runtime, fed as export_llm's runner feeds it:
    `forward(tokens int64 [1, T], input_pos int64 [1]) -> logits`, the KV cache inside the
    program. Works for omnic's programs and export_llm's alike; `forward` returns the rows the
    program computes ([T, vocab] for omnic's, only the last [1, vocab] for export_llm's), valid
    until the next call.

    `reset()` starts again at position 0 without reloading: both programs attend to positions
    below input_pos + T only, so the rows a previous run left in the cache are never read.
    """

    def __init__(self, path: Path, threads: int) -> None:
        import torch  # noqa: F401  (loads libtorch for the bindings)

        import executorch.kernels.quantized  # noqa: F401 - quantized_decomposed::embedding_*
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 - llama:: ops
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        # One pool serves XNNPACK's delegate and the llama:: custom ops; the wheel sizes it to
        # the cores at start-up, the bindings' only knob resets it.
        portable_lib._unsafe_reset_threadpool(threads)  # noqa: SLF001
        self.threads = portable_lib._threadpool_get_thread_count()  # noqa: SLF001
        start = time.perf_counter()
        self.program = Runtime.get().load_program(Path(path))  # a path: mmap'd, as on a phone
        self.method = self.program.load_method("forward")
        self.load_s = time.perf_counter() - start
        names = self.program.method_names
        self.dynamic = ("enable_dynamic_shape" not in names or bool(
            self.program.load_method("enable_dynamic_shape").execute([])[0]))
        self.reset()

    def reset(self) -> None:
        self.position = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(1, -1))
        step = ids.shape[1] if self.dynamic else 1  # a static program takes one token a call
        rows = []
        for start in range(0, ids.shape[1], step):
            part = ids[:, start:start + step]
            (logits,) = self.method.execute([part, torch.tensor([self.position])])
            rows.append(logits.reshape(-1, logits.shape[-1]).to(torch.float32).numpy())
            self.position += part.shape[1]
        # one call: the program's own output buffer, valid until the next call (no copy of
        # [T, vocab] rows inside the timed prefill)
        return rows[0] if len(rows) == 1 else np.concatenate(rows)


def _timed(runner: Any):
    """The timing loop of a runner with `reset()` and `forward(tokens) -> logits rows`."""

    def one(prompt: np.ndarray, decode: int) -> tuple[float, float]:
        runner.reset()
        t0 = time.perf_counter()
        logits = runner.forward(prompt)[-1]
        prefill = time.perf_counter() - t0
        steps = []
        for _ in range(decode):
            t1 = _clock()
            logits = runner.forward(np.array([int(np.argmax(logits))]))[-1]
            steps.append(_since(t1))
        return prefill, steps

    return one


def _ort_timer(folder: Path, threads: int, vocab: int):
    runner = OrtKvRunner(folder, threads)
    return runner.load_s, _timed(runner), {"onnxruntime intra_op_num_threads": threads}


def _omnic_onnx_timer(folder: Path, threads: int, vocab: int):
    """omnic's ONNX model on a plain onnxruntime session through omnic's own runner, which
    feeds every state layout omnic writes (KV caches, window caches, short_conv and mamba2
    states): for models onnxruntime-genai cannot run."""
    from omnic.targets.onnx.target import OnnxRunner

    model = folder / "model.onnx" if folder.is_dir() else folder
    start = time.perf_counter()
    runner = OnnxRunner(model, intra_op_threads=threads)
    return time.perf_counter() - start, _timed(runner), {
        "onnxruntime intra_op_num_threads": threads, "runner": "omnic OnnxRunner"}


def _pte_timer(path: Path, threads: int, vocab: int):
    runner = PteRunner(path, threads)
    return runner.load_s, _timed(runner), {"executorch threadpool threads": runner.threads,
                                           "dynamic_shape": runner.dynamic}


def _tvm_timer(path: Path, threads: int, vocab: int):
    """omnic's TVM directory (<name>-tvm/) in the Relax VM, by omnic's own runner."""
    import tvm

    from omnic.targets.tvm.target import TvmRunner

    start = time.perf_counter()
    runner = TvmRunner(Path(path), num_threads=threads)
    load_s = time.perf_counter() - start
    return load_s, _timed(runner), {
        "tvm runtime.NumThreads": int(tvm.get_global_func("runtime.NumThreads")()),
        "target": json.loads((Path(path) / "decoder.json").read_text())["target"]}


def _llama_timer(path: Path, threads: int, vocab: int):
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    from omnic.targets.gguf.runtime import extra_buffer_types

    # Weight repacking into llama.cpp's "extra" CPU buffer types as omnic's runner decides it:
    # on, unless the CPU has AMX, where this llama-cpp-python build crashes in its AMX matmul
    # (omnic/targets/gguf/runtime.py extra_buffer_types). Same for every file measured.
    extra = extra_buffer_types()
    original = lib.llama_model_default_params

    def params():  # noqa: ANN202
        p = original()
        p.use_extra_bufts = extra
        return p

    lib.llama_model_default_params = params
    start = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - start
    lib.llama_model_default_params = original
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:  # the one row llama.cpp computed (logits_all=False)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))  # noqa: SLF001

    def one(prompt: np.ndarray, decode: int) -> tuple[float, float]:
        llm.reset()  # eval drops cached positions >= n_tokens
        t0 = time.perf_counter()
        llm.eval([int(t) for t in prompt])
        prefill = time.perf_counter() - t0
        token = int(np.argmax(last_logits()))
        steps = []
        for _ in range(decode):
            t1 = _clock()
            llm.eval([token])
            token = int(np.argmax(last_logits()))
            steps.append(_since(t1))
        return prefill, steps

    return load_s, one, {"llama.cpp n_threads": threads, "n_threads_batch": threads,
                         "use_extra_bufts": extra}


TIMERS = {"og": _og_timer, "ort": _ort_timer, "llama": _llama_timer, "pte": _pte_timer,
          "tvm": _tvm_timer, "omnic_onnx": _omnic_onnx_timer}


def worker(kind: str, path: Path, threads: int, prompt_n: int, decode: int, repeat: int,
           vocab: int) -> dict[str, Any]:
    timer = TIMERS[kind]
    load_s, one, settings = timer(path, threads, vocab)
    prompt = np.random.default_rng(0).integers(0, min(vocab, 256), prompt_n, dtype=np.int64)
    runs = [one(prompt, decode) for _ in range(repeat + 1)][1:]  # the first is a warm-up
    prefill = [prompt_n / p for p, _ in runs]
    dec = [decode / sum(w for w, _ in s) for _, s in runs]
    # On a shared machine other processes steal whole time slices: the fastest tenth of the
    # single-token steps (all runs pooled) estimates the uncontended speed, the median run the
    # typical one. Both are reported; neither hides the other.
    steps = sorted(w for _, s in runs for w, _ in s)
    fast = steps[: max(1, len(steps) // 10)]
    out = {"kind": kind, "load_s": load_s, "settings": settings,
           "prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(dec),
           "decode_tok_s_min": min(dec), "decode_tok_s_max": max(dec),
           "decode_tok_s_p10": len(fast) / sum(fast),
           "step_ms_median": 1e3 * statistics.median(steps),
           "runs": [(p, sum(w for w, _ in s)) for p, s in runs], "load_average": load_average()}
    if threads == 1:  # all the work runs on this thread: its CPU time ignores the other load
        cpu = statistics.median(c for _, s in runs for _, c in s)
        out["decode_cpu_tok_s"] = 1.0 / cpu
    return out


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) since `start`."""
    return time.perf_counter() - start[0], time.thread_time() - start[1]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=list(TIMERS), required=True)
    p.add_argument("path", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    result = worker(a.worker, a.path, a.threads, a.prompt, a.decode, a.repeat, a.vocab)
    a.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
