"""Fixtures of the importer tests: the tiny checkpoints of `tests/hf_checkpoints.py`, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_checkpoints import FAMILIES, make_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {family: make_checkpoint(family, root) for family in FAMILIES}
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see tests/conftest.py)."""
