"""Reading checkpoint files into omnic's canonical names, and checking them against the inventory.

The lowest piece of every weight source: the model builder (omnic.model) and the Hugging Face
importers read tensors through here. Importing it does not import torch (the names, checks and
keys are torch-free: `omnic validate` uses them, omnic.importers.checkpoint_checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:
    import torch

    from omnic.spec.inventory import TensorInfo


class WeightError(ValueError):
    """Weights do not match the spec (missing, unexpected or mis-shaped tensors)."""


def check_weights(state: dict[str, Any], inventory: list["TensorInfo"], source: str) -> None:
    """Raise WeightError naming every missing, unexpected or mis-shaped tensor.

    Args:
        state: {name: anything with a `.shape`}: tensors, or the shapes of a checkpoint's header.
    """
    want = {t.name: tuple(t.shape) for t in inventory}
    missing = [n for n in want if n not in state]
    extra = [n for n in state if n not in want]
    shapes = [
        f"{n}: {tuple(state[n].shape)} != {want[n]}"
        for n in want if n in state and tuple(state[n].shape) != want[n]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:8])}"
                        f"{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"unexpected {len(extra)}: {', '.join(extra[:8])}"
                        f"{' ...' if len(extra) > 8 else ''}")
    if shapes:
        problems.append(f"wrong shape: {'; '.join(shapes[:8])}")
    if problems:
        raise WeightError(f"{source}: weights do not match the spec's model: "
                          + " | ".join(problems))


def read_safetensors(path: Path, names: Iterable[str]) -> Iterator[tuple[str, "torch.Tensor"]]:
    """(name, float32 tensor) for `names` of a .safetensors file, through memory maps.

    float32 tensors stay backed by the mapped file (no copy; the mapping lives as long as the
    tensor). Other dtypes are converted, and the file is opened anew for each tensor so that the
    mapped pages of the source are released right after: peak memory is the float32 model plus
    one source tensor, not plus the whole file.
    """
    import torch
    from safetensors import safe_open

    for name in names:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensor = f.get_tensor(name)
        yield name, tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names stored in a .safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:  # the header only: no torch needed
        return list(f.keys())


def safetensors_weights(path: Path, inventory: list["TensorInfo"]) -> dict[str, "torch.Tensor"]:
    """A .safetensors file in omnic's canonical names (see `read_safetensors`)."""
    import torch

    if not path.is_file():
        raise WeightError(f"weights file not found: {path}")
    names = safetensors_keys(path)
    want = {t.name for t in inventory}
    # reported below
    state: dict[str, torch.Tensor] = {n: torch.empty(0) for n in names if n not in want}
    state.update(read_safetensors(path, [n for n in names if n in want]))
    check_weights(state, inventory, str(path))
    return state
