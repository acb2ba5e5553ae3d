"""Where the decoder's weights come from: seeded random, an omnic safetensors file, or a
Hugging Face directory. Each source yields `{canonical name: float32 CPU tensor}` with exactly the
inventory's names and shapes, tensor by tensor, so that peak memory stays one copy of the model.
"""

from __future__ import annotations

import hashlib
import math
import threading
from typing import TYPE_CHECKING, Iterable

import torch

from omnic.constants import Roles

if TYPE_CHECKING:
    from omnic.spec.inventory import TensorInfo

INIT_STD = 0.02
_CHUNK = 1 << 22  # elements generated at a time: bounds the int32 scratch to 16 MiB


def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of one tensor: independent of order, count and other tensors."""
    digest = hashlib.sha256(f"omnic/random/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_tensor(info: "TensorInfo", seed: int, unit_offset: bool) -> torch.Tensor:
    """One seeded tensor: norms at 1 (0 with the Gemma unit offset), norm biases at 0, every
    other tensor uniform with standard deviation 0.02.

    Bit-identical across runs and machines: only integers come out of the generator
    (`torch.randint` on mt19937 is integer arithmetic) and they are mapped to floats with two
    correctly rounded IEEE operations. `torch.randn`/`uniform_` are not used because their CPU
    kernels differ by CPU (SIMD Box-Muller with Sleef approximations, compiler FMA contraction).
    """
    shape = tuple(info.shape)
    if info.role == Roles.NORM:
        # (a gated_deltanet layer's gated norm applies its weight as is, unit offset or not)
        one = info.name.endswith(".weight") and (not unit_offset or ".deltanet." in info.name)
        return torch.ones(shape) if one else torch.zeros(shape)
    out = torch.empty(shape, dtype=torch.float32, device="cpu")
    flat = out.view(-1)
    g = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, info.name))
    # r uniform in [0, 2^24); m = 2r + 1 - 2^24 is an odd integer in (-2^24, 2^24), exact in
    # float32; m * a / 2^24 is uniform on (-a, a) with a = sqrt(3) * std.
    step = math.sqrt(3.0) * INIT_STD / (1 << 24)
    scratch = _scratch()
    for start in range(0, flat.numel(), _CHUNK):
        n = min(_CHUNK, flat.numel() - start)
        r = torch.randint(0, 1 << 24, (n,), generator=g, dtype=torch.int32, out=scratch[:n])
        r.mul_(2).add_(1 - (1 << 24))
        flat[start : start + n].copy_(r).mul_(step)
    return out


_local = threading.local()


def _scratch() -> torch.Tensor:
    """One int32 buffer per thread, reused for every chunk of every tensor: allocating and
    freeing it per chunk fragments malloc's per-thread arenas (~15% extra resident memory
    measured on a 1B model)."""
    buf = getattr(_local, "scratch", None)
    if buf is None:
        buf = _local.scratch = torch.empty(_CHUNK, dtype=torch.int32)
    return buf


def random_weights(
    inventory: Iterable["TensorInfo"], seed: int, unit_offset: bool
) -> dict[str, torch.Tensor]:
    """Seeded random weights for every tensor of the inventory.

    Tensors are drawn on a few threads (each has its own generator, so the result does not
    depend on scheduling; torch releases the GIL inside the kernels).
    """
    from concurrent.futures import ThreadPoolExecutor

    inventory = list(inventory)
    workers = max(1, min(4, torch.get_num_threads(), len(inventory)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        tensors = pool.map(lambda t: random_tensor(t, seed, unit_offset), inventory)
        return {t.name: x for t, x in zip(inventory, tensors)}
