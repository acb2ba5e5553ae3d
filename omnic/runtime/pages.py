"""Give back the resident pages of weights that are memory-mapped from a file.

fp32 safetensors weights are views of the mapped checkpoint (`checkpoint.read_safetensors`): no
copy is made, but every page a lowering or a reference run reads stays in this process's
resident set until the mapping closes, so a compile that reads each weight once ends holding the
whole file (4.9 GB for Llama-3.2-1B) although it needed one tensor at a time. `release(arrays)`
drops the process's page mappings behind arrays that lie in a read-only file mapping (madvise
MADV_DONTNEED): the data stays in the kernel's page cache and the next read maps it again, the
same bytes. Only mappings whose pages are all still the file's bytes qualify (read-only, or
private with no page written, per /proc/self/smaps); arrays in anonymous memory (random weights,
anything computed) or in a written mapping are never touched: there MADV_DONTNEED would zero or
revert them.

Linux only; elsewhere `release` does nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import mmap
import sys
from collections.abc import Iterable, Iterator
from typing import Any

MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


def _clean_file_maps() -> list[tuple[int, int]]:
    """(start, end) of this process's file mappings whose every page is the file's own bytes:
    read-only ones, and private writable ones that no write has copied a page of (smaps
    `Anonymous: 0 kB`; safetensors maps a checkpoint so). Sorted by start."""
    spans, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:  # a mapping's header
                current = None
                perms, inode = head[1], head[4]
                path = head[5].strip() if len(head) > 5 else ""
                if inode != "0" and path.startswith("/") and ("w" not in perms or "p" in perms):
                    start, end = (int(x, 16) for x in head[0].split("-"))
                    current = [start, end, "w" in perms]
                    spans.append(current)
            elif current is not None and current[2] and head[0] == "Anonymous:":
                if head[1] != "0":  # a written (copied) page: not the file's bytes any more
                    spans.remove(current)
                current = None
    return sorted((s, e) for s, e, _ in spans)


def _address(array: Any) -> tuple[int, int] | None:
    """(address, bytes) of a numpy array or torch tensor's data; None for anything else."""
    if hasattr(array, "data_ptr") and hasattr(array, "untyped_storage"):  # torch.Tensor
        if array.device.type != "cpu":
            return None
        return array.data_ptr(), array.numel() * array.element_size()
    if hasattr(array, "ctypes") and hasattr(array, "nbytes"):  # numpy.ndarray
        return array.ctypes.data, array.nbytes
    return None


def release(arrays: Iterable[Any]) -> int:
    """Drop the resident pages of `arrays` that are views of a clean file mapping.

    Only whole pages inside one such mapping are released. Returns the bytes released.
    """
    if not sys.platform.startswith("linux"):
        return 0
    wanted = [a for a in map(_address, arrays) if a is not None and a[1] > 0]
    if not wanted:
        return 0
    spans = _clean_file_maps()
    starts = [s for s, _ in spans]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for addr, nbytes in wanted:
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr + nbytes > spans[i][1]:
            continue  # not (wholly) in a clean file mapping: anonymous or written, leave it
        lo = -(-addr // _PAGE) * _PAGE
        hi = (addr + nbytes) // _PAGE * _PAGE
        if hi > lo and libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
            released += hi - lo
    return released


@contextlib.contextmanager
def released_after_each_block(decoder: Any) -> Iterator[None]:
    """While active, each block's parameters (and the top-level ones after the whole forward)
    are `release`d as soon as that module has run: a reference forward over a memory-mapped
    checkpoint then holds about one block resident instead of the whole model."""
    def after(module: Any, *_: Any) -> None:  # None: a forward hook's value replaces the output
        release(module.parameters())

    blocks = list(getattr(decoder, "layers", []))
    handles = [b.register_forward_hook(after) for b in [*blocks, decoder]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def trim_heap() -> bool:
    """Return the C heap's free memory to the system (glibc `malloc_trim`): a stage's freed
    arrays otherwise stay counted in the resident set of every later stage. False where the C
    library has no malloc_trim."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
