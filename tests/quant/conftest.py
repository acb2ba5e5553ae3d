"""Tiny models on a shared 2-core machine: one torch thread for every test here."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(request):
    if "torch" not in __import__("sys").modules:
        yield
        return
    request.getfixturevalue("one_torch_thread")
    yield
