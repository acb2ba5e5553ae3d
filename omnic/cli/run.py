"""`omnic run SPEC|BUILD_DIR [--target X] (--prompt TEXT | --tokens 5,17,99) --max-new-tokens N`.

Greedy decoding with the KV cache: from a spec on the PyTorch reference, or from a compiled build
directory on the runtime of `--target`. `--json` prints {"tokens": [...], "text": ...};
`--logits-out FILE.npy` writes the prompt's logits, float32 [prompt_len, vocab].
Exit status: 0 done, 1 the artifact cannot run on this host, 2 bad input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


class RunError(ValueError):
    """Bad input to `omnic run` (reported as one line, exit status 2)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="greedy generation from a spec (reference) or a build (any target)",
        description="Greedy decoding. SOURCE is a spec YAML (runs the PyTorch reference) or a build "
        "directory with manifest.json (runs the artifact of --target on its runtime).",
    )
    p.add_argument("source", metavar="SPEC|BUILD_DIR")
    p.add_argument("--target", help="target id, required with a build directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text, encoded with the spec's tokenizer (bos added)")
    what.add_argument("--tokens", help="comma-separated token ids, used as given")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at an end-of-sequence id")
    p.add_argument("--json", action="store_true", help='print {"tokens": [...], "text": ...}')
    p.add_argument("--logits-out", metavar="FILE.npy", help="write the prompt's logits [T, vocab]")
    p.set_defaults(func=run)


def _parse_tokens(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise RunError(f"--tokens must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise RunError("--tokens is empty")
    return ids


def _build_tokenizer(build_dir: Path, target: str, spec):
    """The tokenizer of a build: byte from the spec, else a tokenizer.json the build carries."""
    from omnic.tokenizer import ByteTokenizer, HFTokenizer

    if spec.tokenizer.kind == "byte":
        return ByteTokenizer(spec.model.vocab_size)
    for where in (build_dir / target, build_dir):
        found = sorted(where.rglob("tokenizer.json")) if where.is_dir() else []
        if found:
            return HFTokenizer(found[0].parent)
    original = Path(spec.tokenizer.path)
    if original.is_absolute() and (original / "tokenizer.json").is_file():
        return HFTokenizer(original)
    return None


def _open(args):
    """(runner, tokenizer or None, vocab_size) for a spec file or a build directory."""
    source = Path(args.source)
    if source.is_dir():
        if not (source / "manifest.json").is_file():
            raise RunError(f"{source}: a directory without manifest.json is not an omnic build")
        if not args.target:
            raise RunError("a build directory needs --target (for example --target onnx)")
        try:
            from omnic.compiler.build_runner import open_build_runner
        except ImportError as err:
            raise RunError(f"running builds is not available in this installation: {err}") from None
        from omnic.compiler import manifest as mf
        from omnic.spec import ResolvedSpec

        spec = ResolvedSpec.model_validate(mf.load(source).spec)
        runner = open_build_runner(source, args.target)
        return runner, _build_tokenizer(source, args.target, spec), spec.model.vocab_size
    if args.target:
        raise RunError("--target needs a build directory; a spec runs on the PyTorch reference")
    from omnic.compiler.build import build_model
    from omnic.runtime.torch_runner import TorchRunner
    from omnic.spec.load import SpecError
    from omnic.spec.validate import load_resolved
    from omnic.tokenizer import load_tokenizer

    try:
        spec = load_resolved(source)
    except SpecError as err:
        raise RunError("invalid spec:\n" + "\n".join(str(d) for d in err.args[0])) from None
    decoder = build_model(spec, source.parent)
    return TorchRunner(decoder), load_tokenizer(spec, source.parent), spec.model.vocab_size


def generate(args) -> dict:
    """Run the greedy loop for parsed arguments; returns {"tokens", "text", "prompt_logits"}."""
    import numpy as np

    from omnic.runtime.generate import greedy

    runner, tokenizer, vocab = _open(args)
    if args.prompt is not None:
        if tokenizer is None:
            raise RunError("this build carries no tokenizer; pass --tokens instead of --prompt")
        prompt = tokenizer.encode(args.prompt, add_special_tokens=True)
    else:
        prompt = _parse_tokens(args.tokens)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise RunError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    stop = () if args.ignore_eos or tokenizer is None else tokenizer.eos_ids
    tokens, logits = greedy(runner, prompt, args.max_new_tokens, stop_ids=stop)
    text = tokenizer.decode(tokens) if tokenizer is not None else None
    return {"tokens": tokens, "text": text, "prompt_logits": np.asarray(logits, dtype=np.float32)}


def run(args) -> int:
    import numpy as np
    from rich.console import Console
    from rich.markup import escape

    from omnic.targets.base import NotRunnable

    console = Console(stderr=True, highlight=False)
    try:
        result = generate(args)
    except NotRunnable as err:
        console.print(f"[yellow]not runnable on this host:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except (RunError, ValueError, OSError) as err:
        if os.environ.get("OMNIC_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    if args.logits_out:
        np.save(args.logits_out, result["prompt_logits"])
    if args.json:
        print(json.dumps({"tokens": result["tokens"], "text": result["text"]}))
    elif result["text"] is not None:
        print(result["text"])
    else:
        print(",".join(str(t) for t in result["tokens"]))
    sys.stdout.flush()
    return 0
