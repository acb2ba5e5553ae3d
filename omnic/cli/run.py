"""`omnic run SPEC|BUILD_DIR [--target X] (--prompt TEXT | --tokens 5,17,99) --max-new-tokens N`.

Greedy decoding with the KV cache: from a spec on the PyTorch reference, or from a compiled build
directory on the runtime of `--target` (`--target torch` rebuilds the reference from the build's
manifest). `--json` prints {"tokens": [...], "text": ...}; `--logits-out FILE.npy` writes the
prompt's logits, float32 [prompt_len, vocab].

Multimodal builds: `--image FILE`, `--audio FILE.wav` and `--sensors 0.1,0.2,...|FILE.npy` run
each input through its encoder (the build's component artifacts on a `--target` that takes input
embeddings, i.e. has `Target.load_embeds` (ONNX), or the reference), splice the embeddings in at
the prompt's placeholders (`<image>`, `<audio>`, `<sensor>`; see omnic.runtime.multimodal) and
decode with the decoder on inputs_embeds (omnic.compiler.multimodal_run opens the parts). When
the spec has an action head, the predicted actions (from the last prompt position's final hidden
state) are printed after the text (`actions: [[...]]`, or "actions" in --json).
A build's artifact runs only while its sha256 is the manifest's (`--no-verify` skips the check),
and logits the runtime returns empty, misshapen or non-finite stop the run rather than decode to
text.
Exit status: 0 done; 1 the artifact cannot run on this host, or its runtime returned unusable
logits; 2 bad input, a build that is not usable (no manifest, no such artifact, an artifact
modified since the compile).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REFERENCE = "torch"  # --target value of the PyTorch reference


class RunError(ValueError):
    """Bad input to `omnic run` (reported as one line, exit status 2)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="greedy generation from a spec (reference) or a build (any target)",
        description="Greedy decoding. SOURCE is a spec YAML (runs the PyTorch reference) or a "
        "build directory with manifest.json (runs the artifact of --target on its runtime; "
        f"--target {REFERENCE} runs the reference rebuilt from the build's spec).",
    )
    p.add_argument("source", metavar="SPEC|BUILD_DIR")
    p.add_argument("--target", help=f"target id (or {REFERENCE}), required with a build directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text, encoded with the spec's tokenizer (bos added)")
    what.add_argument("--tokens", help="comma-separated token ids, used as given")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at an end-of-sequence id")
    p.add_argument("--json", action="store_true", help='print {"tokens": [...], "text": ...}')
    p.add_argument("--logits-out", metavar="FILE.npy", help="write the prompt's logits [T, vocab]")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="run the artifact even when its sha256 is not the one in the manifest")
    mm = p.add_argument_group("multimodal inputs (specs with modalities)")
    mm.add_argument("--image", metavar="FILE", help="an image for the vision encoder (<image>)")
    mm.add_argument("--audio", metavar="FILE", help="16 kHz audio for the audio encoder (<audio>)")
    mm.add_argument("--sensors", metavar="V,V,...|FILE.npy",
                    help="one sensor reading for the sensor projector (<sensor>)")
    for flag, default in (("image", "<image>"), ("audio", "<audio>"), ("sensor", "<sensor>")):
        mm.add_argument(f"--{flag}-token", metavar="TOKEN",
                        help=f"placeholder token in the prompt (default {default}); a Hugging "
                        "Face tokenizer must have it")
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


class _Source:
    """What SOURCE names: the resolved spec, and the build directory or the spec's folder."""

    def __init__(self, args) -> None:
        source = Path(args.source)
        self.build_dir: Path | None = None
        self.target = args.target
        self.verify = getattr(args, "verify", True)
        if source.is_dir():
            if not (source / "manifest.json").is_file():
                raise RunError(f"{source}: a directory without manifest.json is not an omnic build")
            if not args.target:
                raise RunError("a build directory needs --target (for example --target onnx)")
            from omnic.compiler import manifest as mf
            from omnic.spec import ResolvedSpec

            self.build_dir = source
            self.manifest = mf.load(source)
            self.spec = ResolvedSpec.model_validate(self.manifest.spec)
            self.spec_dir = Path(".")  # paths in the build's spec: absolute, or from here
            return
        if args.target and args.target != REFERENCE:
            raise RunError("--target needs a build directory; a spec runs on the PyTorch reference")
        from omnic.spec.load import SpecError
        from omnic.compiler.validate import load_resolved

        try:
            self.spec = load_resolved(source)
        except SpecError as err:
            raise RunError("invalid spec:\n" + "\n".join(str(d) for d in err.diagnostics)) from None
        self.spec_dir = source.parent
        self.target = REFERENCE

    @property
    def reference(self) -> bool:
        return self.target == REFERENCE

    def label(self) -> str:
        """What runs, for messages: the build's artifact path and target, or the reference."""
        if self.reference:
            return "the PyTorch reference"
        from omnic.compiler.artifact_runner import BuildError, find_entry

        try:
            return f"{self.build_dir / find_entry(self.manifest, self.target).path} ({self.target})"
        except BuildError:
            return f"{self.build_dir} ({self.target})"

    def takes_embeddings(self) -> bool:
        """Whether --target can run the decoder on input embeddings (the reference can)."""
        if self.reference:
            return True
        from omnic.targets.base import get_target, takes_embeddings

        try:
            return takes_embeddings(get_target(self.target))
        except KeyError:
            return False

    def embeddings_targets(self) -> list[str]:
        """The --target values this source can run multimodal prompts on."""
        if self.build_dir is None:
            return [REFERENCE]
        from omnic.compiler.multimodal_run import embeds_targets

        return [*embeds_targets(self.manifest), REFERENCE]

    def decoder(self):
        """The reference decoder (built from the spec's weights)."""
        from omnic.model import build_model

        try:
            return build_model(self.spec, self.spec_dir)
        except FileNotFoundError as err:
            raise RunError(f"cannot build the reference: {err} (a build's spec reads relative "
                           "paths from the current directory; run the spec file instead)") from None

    def tokenizer(self):
        if self.build_dir is not None and not self.reference:
            return _build_tokenizer(self.build_dir, self.target, self.spec)
        from omnic.tokenizer import load_tokenizer

        return load_tokenizer(self.spec, self.spec_dir)


def _open(src: _Source):
    """(Runner, tokenizer or None) of the text decoder."""
    if src.reference:
        from omnic.runtime.torch_runner import TorchRunner

        return TorchRunner(src.decoder()), src.tokenizer()
    try:
        from omnic.compiler.artifact_runner import open_build_runner
    except ImportError as err:
        raise RunError(f"running builds is not available in this installation: {err}") from None
    return open_build_runner(src.build_dir, src.target, verify=src.verify), src.tokenizer()


def _prompt_ids(args, tokenizer, vocab: int) -> list[int]:
    if args.prompt is not None:
        if tokenizer is None:
            raise RunError("this build carries no tokenizer; pass --tokens instead of --prompt")
        prompt = tokenizer.encode(args.prompt, add_special_tokens=True)
    else:
        prompt = _parse_tokens(args.tokens)
    _check_vocab(prompt, vocab)
    return prompt


def _check_vocab(prompt: list[int], vocab: int) -> None:
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise RunError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")


def _media_given(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("image", "audio", "sensors"))


def _media(args, spec) -> dict:
    """{component: encoder input, batch 1} for the media flags given."""
    from omnic.constants import Components
    from omnic.runtime import media

    m, out = spec.modalities, {}
    for flag, comp, part in (("image", Components.VISION_ENCODER, m.vision),
                             ("audio", Components.AUDIO_ENCODER, m.audio),
                             ("sensors", Components.SENSOR_PROJECTOR, m.sensors)):
        if getattr(args, flag) is not None and part is None:
            raise RunError(f"--{flag}: the spec has no {comp.replace('_', ' ')}")
    if args.image is not None:
        out[Components.VISION_ENCODER] = media.load_image(args.image, m.vision)
    if args.audio is not None:
        out[Components.AUDIO_ENCODER] = media.log_mel(media.load_audio(args.audio), m.audio)
    if args.sensors is not None:
        out[Components.SENSOR_PROJECTOR] = media.load_sensors(args.sensors, m.sensors.dim)
    return out


def _generate_multimodal(args, src: _Source) -> dict:
    """Encoders -> placeholder rows -> the decoder on inputs_embeds, greedy (module docstring)."""
    from omnic.compiler import multimodal_run
    from omnic.constants import Components
    from omnic.runtime import multimodal as mm
    from omnic.spec.component_inventory import placeholder_tokens

    if not src.takes_embeddings():
        raise RunError(f"--image/--audio/--sensors run on --target "
                       f"{' or '.join(src.embeddings_targets())}; {src.target} cannot take input "
                       "embeddings")
    spec = src.spec
    inputs = _media(args, spec)  # decode (and reject) the media before anything heavy loads
    tokenizer = src.tokenizer()
    if tokenizer is None:
        raise RunError("this build carries no tokenizer; multimodal prompts need one")
    counts = {c: n for c, n in placeholder_tokens(spec).items() if c in inputs}
    names = {Components.VISION_ENCODER: args.image_token, Components.AUDIO_ENCODER:
             args.audio_token, Components.SENSOR_PROJECTOR: args.sensor_token}
    ids = mm.placeholder_ids(tokenizer, list(counts), names)
    if args.prompt is not None:
        prompt = mm.assemble_prompt(args.prompt, tokenizer, counts, ids, names)
    else:
        prompt = _parse_tokens(args.tokens)
        mm.check_placeholders(prompt, counts, ids)
    _check_vocab(prompt, spec.model.vocab_size)
    needed = list(inputs) + ([Components.ACTION_HEAD] if spec.modalities.action_head else [])
    if src.reference:
        parts = multimodal_run.reference_parts(spec, src.spec_dir, needed, src.decoder())
    else:
        parts = multimodal_run.build_parts(src.build_dir, src.target, needed, verify=src.verify)
    stop = () if args.ignore_eos else tokenizer.eos_ids
    result = mm.generate(parts.decoder, prompt, {c: parts.components[c] for c in inputs}, inputs,
                         ids, args.max_new_tokens, stop_ids=stop,
                         action_head=parts.components.get(Components.ACTION_HEAD),
                         vocab=spec.model.vocab_size)
    return {"tokens": result.tokens, "text": tokenizer.decode(result.tokens),
            "prompt_logits": result.prompt_logits, "actions": result.actions}


def generate(args) -> dict:
    """Run the greedy loop for parsed arguments.

    Returns:
        {"tokens", "text", "prompt_logits"}, and "actions" ([horizon, dim]) when the spec has
        an action head and the run went through the multimodal decoder.
    """
    from omnic.runtime.generate import BadLogits

    src = _Source(args)
    m = src.spec.modalities
    try:
        if _media_given(args) or (m.action_head is not None and src.takes_embeddings()):
            return _generate_multimodal(args, src)
        return _generate_text(args, src)
    except BadLogits as err:
        raise BadLogits(f"{src.label()}: {err}") from None


def _generate_text(args, src: _Source) -> dict:
    """The text decoder's greedy loop (generate() without media)."""
    import numpy as np

    from omnic.runtime.generate import greedy

    runner, tokenizer = _open(src)
    vocab = src.spec.model.vocab_size
    prompt = _prompt_ids(args, tokenizer, vocab)
    stop = () if args.ignore_eos or tokenizer is None else tokenizer.eos_ids
    tokens, logits = greedy(runner, prompt, args.max_new_tokens, stop_ids=stop, vocab=vocab)
    text = tokenizer.decode(tokens) if tokenizer is not None else None
    return {"tokens": tokens, "text": text, "prompt_logits": np.asarray(logits, dtype=np.float32)}


def run(args) -> int:
    import numpy as np
    from rich.console import Console
    from rich.markup import escape

    from omnic.runtime.generate import BadLogits
    from omnic.targets.base import NotRunnable

    console = Console(stderr=True, highlight=False)
    try:
        result = generate(args)
    except NotRunnable as err:
        console.print(f"[yellow]not runnable on this host:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    except BadLogits as err:  # the artifact ran and failed, as a failed check does: 1, not 2
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 1
    # ValueError includes artifact_runner.BuildError and its ArtifactModified: a build with no
    # manifest, no such artifact, or an artifact changed since the compile is input this command
    # cannot use (2, as `omnic verify` and `omnic bench` answer an unreadable build), not a check
    # that ran and failed (1)
    except (RunError, ValueError, OSError) as err:
        if os.environ.get("OMNIC_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    if args.logits_out:
        np.save(args.logits_out, result["prompt_logits"])
    actions = result.get("actions")
    if args.json:
        out = {"tokens": result["tokens"], "text": result["text"]}
        if actions is not None:
            out["actions"] = np.asarray(actions).tolist()
        print(json.dumps(out))
    else:
        if result["text"] is not None:
            print(result["text"])
        else:
            print(",".join(str(t) for t in result["tokens"]))
        if actions is not None:
            print("actions: " + json.dumps(np.round(np.asarray(actions), 6).tolist()))
    sys.stdout.flush()
    return 0
