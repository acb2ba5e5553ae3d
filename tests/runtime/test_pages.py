"""pages.release: drops resident pages of read-only file mappings only, and data survives."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from omnic.runtime import pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux madvise")

MB = 2**20


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile")


def _file(tmp_path: Path, n: int = 8 * MB // 4) -> tuple[Path, np.ndarray]:
    values = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    path = tmp_path / "w.bin"
    values.tofile(path)
    return path, values


def test_read_only_mapping_is_released_and_reads_back_the_same(tmp_path):
    path, values = _file(tmp_path)
    mapped = np.memmap(path, dtype=np.float32, mode="r")
    assert float(mapped.sum()) == pytest.approx(float(values.sum()), rel=1e-5)  # touch all
    before = _rss_file()
    released = pages.release([mapped])
    after = _rss_file()
    assert released >= values.nbytes - 2 * pages._PAGE
    assert before - after >= values.nbytes // 2  # the resident set really shrank
    np.testing.assert_array_equal(np.asarray(mapped), values)  # re-read from the page cache


def test_anonymous_and_writable_memory_is_never_touched(tmp_path):
    path, values = _file(tmp_path)
    anon = values.copy()
    shared = np.memmap(path, dtype=np.float32, mode="r+")  # MAP_SHARED, writable
    private = np.memmap(path, dtype=np.float32, mode="c")  # MAP_PRIVATE, copy on write
    private[:4] = 7.0  # a private change a DONTNEED would revert to the file's bytes
    assert pages.release([anon, shared, private, np.float32(1.0)]) == 0
    np.testing.assert_array_equal(anon, values)
    assert (private[:4] == 7.0).all()


def test_torch_tensor_from_safetensors_is_released(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    from omnic.importers.checkpoint import read_safetensors

    want = torch.randn(1024, 1024)
    save_file({"w": want}, str(tmp_path / "w.safetensors"))
    (_, got), = read_safetensors(tmp_path / "w.safetensors", ["w"])
    assert torch.equal(got, want)
    assert pages.release([got]) >= want.numel() * 4 - 2 * pages._PAGE
    assert torch.equal(got, want)


def test_released_after_each_block_releases_and_the_output_is_unchanged(tmp_path):
    torch = pytest.importorskip("torch")
    path, _ = _file(tmp_path, 4 * 64 * 64)
    mapped = torch.from_numpy(np.array(np.memmap(path, dtype=np.float32, mode="r"), copy=False))
    # np.memmap -> torch view: parameters that live in the read-only mapping
    blocks = torch.nn.ModuleList(torch.nn.Linear(64, 64, bias=False) for _ in range(4))
    for i, b in enumerate(blocks):
        b.weight = torch.nn.Parameter(mapped[i * 4096:(i + 1) * 4096].view(64, 64),
                                      requires_grad=False)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = blocks

        def forward(self, x):
            for b in self.layers:
                x = b(x)
            return x

    model, x = Model(), torch.randn(2, 64)
    expected = model(x)
    calls = []
    real = pages.release
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pages, "release", lambda arrays: calls.append(list(arrays)) or real(arrays))
        with pages.released_after_each_block(model):
            got = model(x)
    assert torch.equal(got, expected)
    assert len(calls) == 5  # one per block, then the whole model
    assert model._forward_hooks == {} and all(b._forward_hooks == {} for b in blocks)
