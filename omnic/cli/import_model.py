"""`omnic import SOURCE -o spec.yaml` — write a spec for a Hugging Face checkpoint directory or a
llama.cpp GGUF file.

Exit status 0 when the spec was written, 2 when the architecture or a config feature is not
supported (the message names it), the source is not a checkpoint, or an option is invalid.
"""

from __future__ import annotations

from omnic.constants import Targets


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="write a spec for a Hugging Face checkpoint directory or a GGUF file",
        description="Write a spec whose weights and tokenizer are read from SOURCE: a Hugging "
        "Face directory (config.json + safetensors; Llama, Mistral, Qwen2, Qwen3, Gemma, "
        "Gemma 2, Phi-3, Mixtral) or a llama.cpp GGUF file (llama, qwen2, qwen3; its weights are "
        "dequantized exactly and its vocabulary written as tokenizer.json beside the spec).",
    )
    p.add_argument("source", metavar="SOURCE", help="Hugging Face model directory or .gguf file")
    p.add_argument("-o", "--out", required=True, metavar="SPEC", help="spec YAML file to write")
    p.add_argument("--context-length", type=int, metavar="N",
                   help="static KV cache length (default: the checkpoint's)")
    p.add_argument("--name", help="spec name (default: the source's name)")
    p.add_argument("--device", default="desktop_cpu", metavar="PRESET",
                   help="device preset (default: desktop_cpu)")
    p.add_argument("--quant", metavar="PRESET",
                   help="quantization preset (default: none, float32 weights)")
    p.add_argument("--targets", metavar="IDS",
                   help="comma-separated targets (default: every target whose pre-flight "
                   f"accepts the model: {', '.join(Targets.ALL)})")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from omnic.compiler.importing import ImportFailed, import_spec

    console = Console(stderr=True, highlight=False)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    try:
        result = import_spec(Path(args.source), Path(args.out), context_length=args.context_length,
                             name=args.name, device=args.device, quant=args.quant,
                             targets=targets)
    except ImportFailed as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    m = result.data["model"]
    console.print(
        f"import: {args.source} -> {args.out}: {m['n_layers']} layers, d_model {m['d_model']}, "
        f"vocab {m['vocab_size']}, tokenizer {result.data['tokenizer']['kind']}; targets "
        f"{', '.join(result.data['targets']) or 'none'}", soft_wrap=True)
    for target, why in result.dropped.items():
        console.print(f"  not enabled: {target}: {escape(why)}", soft_wrap=True)
    return 0
