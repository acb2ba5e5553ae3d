"""`omnic import HF_DIR -o spec.yaml` — write a spec for a Hugging Face checkpoint directory.

Exit status 0 when the spec was written, 2 when the architecture or a config feature is not
supported (the message names it) or the directory is not a checkpoint.
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="write a spec for a Hugging Face checkpoint directory",
        description="Read HF_DIR/config.json and write a spec whose weights and tokenizer point at "
        "HF_DIR. Supported: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Phi-3, Mixtral.",
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory")
    p.add_argument("-o", "--out", required=True, metavar="SPEC", help="spec YAML file to write")
    p.add_argument("--context-length", type=int, metavar="N",
                   help="static KV cache length "
                   "(default: the checkpoint's max_position_embeddings)")
    p.add_argument("--name", help="spec name (default: the directory's name)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    from omnic.importers.hf import UnsupportedModel, import_hf

    console = Console(stderr=True, highlight=False)
    try:
        data = import_hf(args.hf_dir, args.out, context_length=args.context_length, name=args.name)
    except UnsupportedModel as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    m = data["model"]
    console.print(
        f"import: {args.hf_dir} -> {args.out}: {m['n_layers']} layers, d_model {m['d_model']}, "
        f"vocab {m['vocab_size']}, tokenizer {data['tokenizer']['kind']}"
    )
    return 0
