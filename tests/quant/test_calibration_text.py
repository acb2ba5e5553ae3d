"""omnic's calibration text (omnic.quant.calibration_text): the built-in corpus, its disjointness
from the golden texts, user files and the windows cut for GPTQ/AWQ."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from omnic.quant.calibration_text import (
    BUILTIN, builtin_texts, load_texts, samples, split_passages,
)

GOLDEN = Path(__file__).resolve().parents[2] / "omnic" / "golden" / "texts"
CORPUS = resources.files("omnic.quant").joinpath("calibration")


def corpus_files():
    return sorted((f for f in CORPUS.iterdir() if f.name.endswith(".txt")), key=lambda f: f.name)


def golden_texts() -> list[str]:
    texts = [p.read_text(encoding="utf-8") for p in sorted(GOLDEN.glob("*.txt"))]
    assert texts, f"no golden text in {GOLDEN}"
    return texts


def squash(text: str) -> str:
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def shingles(text: str, k: int = 8) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}


# -- the built-in corpus -------------------------------------------------------------------------

def test_every_file_has_passages_and_builtin_texts_keeps_file_order():
    files = corpus_files()
    assert [f.name[:2] for f in files] == [f"{i:02d}" for i in range(1, 12)]
    per_file = [split_passages(f.read_text(encoding="utf-8")) for f in files]
    for f, passages in zip(files, per_file):
        assert len(passages) >= 2, f"{f.name}: {len(passages)} passage(s)"
    texts = builtin_texts()
    assert texts == [p for ps in per_file for p in ps]
    assert all(t and t == t.strip() and "\n---\n" not in t for t in texts)
    assert load_texts(BUILTIN) == texts


def test_total_size_in_range_and_readme_lists_every_file():
    sizes = {f.name: len(f.read_bytes()) for f in corpus_files()}
    assert 60_000 <= sum(sizes.values()) <= 90_000, sizes
    assert all(s >= 2_500 for s in sizes.values()), sizes
    readme = CORPUS.joinpath("README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme
    for name in sizes:
        assert f"`{name}`" in readme, name


def test_no_golden_sentence_in_the_corpus():
    corpus = squash("\n".join(builtin_texts()))
    for golden in golden_texts():
        pieces = set(re.split(r"[.!?\n]", golden)) | set(re.split(r"[.!?\n。！？]", golden))
        sentences = {squash(s) for s in pieces if len(s.strip()) >= 30}
        assert sentences
        found = sorted(s for s in sentences if s in corpus)
        assert not found, f"golden sentences in the calibration corpus: {found}"


def test_no_golden_8_word_shingle_in_the_corpus():
    corpus = shingles("\n".join(builtin_texts()))
    golden = set().union(*(shingles(t) for t in golden_texts()))
    assert golden
    shared = sorted(" ".join(s) for s in golden & corpus)
    assert not shared, f"8-word runs shared with the golden texts: {shared[:5]}"


# -- a user's file -------------------------------------------------------------------------------

def test_load_texts_reads_a_file_relative_to_the_spec_dir(tmp_path):
    text = "first one\r\n\r\n---\r\n\r\nsecond, été\n\n---\n\n"
    (tmp_path / "cal.txt").write_bytes(text.encode("utf-8"))
    assert load_texts("cal.txt", tmp_path) == ["first one", "second, été"]
    assert load_texts(str(tmp_path / "cal.txt")) == ["first one", "second, été"]


def test_load_texts_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"calibration text .*nope\.txt: cannot be read") as e:
        load_texts("nope.txt", tmp_path)
    assert str(tmp_path / "nope.txt") in str(e.value)


@pytest.mark.parametrize("content", [b"", b"  \n\n", b"\n---\n\n---\n"])
def test_load_texts_empty_file(tmp_path, content):
    (tmp_path / "empty.txt").write_bytes(content)
    with pytest.raises(ValueError, match="empty") as e:
        load_texts("empty.txt", tmp_path)
    assert str(tmp_path / "empty.txt") in str(e.value)


def test_load_texts_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8") as e:
        load_texts("latin1.txt", tmp_path)
    assert str(tmp_path / "latin1.txt") in str(e.value)


# -- windows -------------------------------------------------------------------------------------

def passages_ids(count: int = 40) -> list[list[int]]:
    """Passages of 5..44 distinct ids each (passage p holds p*1000, p*1000+1, ...)."""
    return [list(range(p * 1000, p * 1000 + 5 + p)) for p in range(count)]


def test_samples_n_windows_of_seq_len_cut_from_the_shuffled_concatenation():
    ids = passages_ids()
    wins = samples(ids, 8, 32, seed=0)
    assert len(wins) == 8 and all(len(w) == 32 for w in wins)
    flat = [t for w in wins for t in w]
    assert len(set(flat)) == len(flat)  # consecutive windows, no overlap
    starts = {p[0] for p in ids}
    firsts = [t for t in flat if t in starts]
    # whole passages in order: each passage's ids appear consecutively
    for f in firsts[:-1]:
        k = flat.index(f)
        assert flat[k:k + len(ids[f // 1000])] == ids[f // 1000]


def test_samples_deterministic_for_a_seed_and_different_for_another():
    ids = passages_ids()
    assert samples(ids, 8, 32, seed=3) == samples(ids, 8, 32, seed=3)
    assert samples(ids, 8, 32, seed=3) != samples(ids, 8, 32, seed=4)


def test_samples_fewer_tokens_than_asked_gives_the_full_windows_there_are():
    ids = [list(range(50)), list(range(100, 150))]  # 100 ids
    wins = samples(ids, 10, 30)
    assert [len(w) for w in wins] == [30, 30, 30]


def test_samples_tiny_corpus_gives_one_short_window():
    assert samples([[7, 8], [9]], 4, 16, seed=1) in ([[7, 8, 9]], [[9, 7, 8]])


def test_samples_rejects_no_tokens_and_bad_sizes():
    with pytest.raises(ValueError, match="no token"):
        samples([[], []], 4, 16)
    with pytest.raises(ValueError, match="n >= 1"):
        samples([[1, 2]], 0, 16)
    with pytest.raises(ValueError, match="seq_len >= 1"):
        samples([[1, 2]], 1, 0)
