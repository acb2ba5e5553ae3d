"""The parts of one multimodal run (`omnic run --image/--audio/--sensors`): a decoder on input
embeddings and the components it needs, each as run(x) -> y.

Either the PyTorch reference, built from a spec (`reference_parts`), or a compiled build on one
target's runtime (`build_parts`), opened from its manifest through the Target interface alone:
`load_embeds` for the decoder, `load` for each component. The prompt, the splice and the greedy
loop over these parts are omnic.runtime.multimodal's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from omnic.constants import Components
from omnic.runtime.multimodal import (
    EmbedsRunner, PromptError, TorchEmbedsRunner, torch_component_runner,
)

if TYPE_CHECKING:
    import torch

    from omnic.compiler import manifest as mf


@dataclass
class Parts:
    """A decoder on embeddings and the components one run needs, each as run(x) -> y."""

    decoder: EmbedsRunner
    components: dict[str, Callable[[np.ndarray], np.ndarray]]


def reference_parts(spec: Any, spec_dir: Any, components: Sequence[str],
                    decoder: "torch.nn.Module | None" = None) -> Parts:
    """The PyTorch reference: the decoder and the components built from the spec."""
    from omnic.model import build_model
    from omnic.model.components import build_components

    built = build_components(spec, spec_dir) if components else {}
    missing = [c for c in components if c not in built]
    if missing:
        raise PromptError(f"the spec has no {', '.join(missing)}")
    decoder = decoder if decoder is not None else build_model(spec, spec_dir)
    return Parts(TorchEmbedsRunner(decoder),
                 {c: torch_component_runner(built[c].module) for c in components})


def embeds_targets(manifest: "mf.Manifest") -> list[str]:
    """The build's targets that can run their decoder on input embeddings."""
    from omnic.targets.base import get_target, takes_embeddings

    out = []
    for t in manifest.targets:
        try:
            if takes_embeddings(get_target(t)):
                out.append(t)
        except KeyError:  # a third-party target not installed here
            continue
    return out


def build_parts(build_dir: str | Path, target: str, components: Sequence[str],
                verify: bool = True) -> Parts:
    """The compiled parts of a build on `target`'s runtime: its decoder artifact through
    `load_embeds` (ONNX: embedding.onnx + text.onnx) and the components' artifacts.

    Args:
        build_dir: the build directory.
        target: target id.
        components: the components the run needs.
        verify: refuse artifacts whose sha256 differs from the manifest's.

    Raises:
        omnic.compiler.artifact_runner.BuildError: no manifest, or the build lacks one of the
            artifacts (or the decoder's files on embeddings); ArtifactModified (a BuildError)
            when verify and an artifact's bytes are not those the manifest records.
        omnic.targets.base.NotRunnable: the target cannot take embeddings, or this host cannot
            run the artifacts.
    """
    from omnic.compiler.artifact_runner import (
        BuildError, artifact_from_entry, check_artifacts, find_entry, load_manifest,
    )
    from omnic.targets.base import get_target, load_embeds

    build_dir = Path(build_dir)
    manifest = load_manifest(build_dir)
    dec_entry = find_entry(manifest, target, Components.DECODER)
    entries = {comp: find_entry(manifest, target, comp) for comp in components}
    if verify:
        check_artifacts(build_dir, [dec_entry, *entries.values()])
    impl = get_target(target)
    try:
        decoder = load_embeds(impl, artifact_from_entry(dec_entry), build_dir)
    except FileNotFoundError as err:
        raise BuildError(str(err)) from None
    runs = {}
    for comp, entry in entries.items():
        runner = impl.load(artifact_from_entry(entry), build_dir)
        if not hasattr(runner, "run"):
            raise BuildError(f"{target}: the {comp} artifact did not load as a component")
        runs[comp] = runner.run
    return Parts(decoder, runs)
