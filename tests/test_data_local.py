"""Local {split}.{lang}[.gz] corpora: prepare, cache, filters, and every bad-input message."""

from __future__ import annotations

import gzip
import logging
import multiprocessing
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

import nmt.data.prepare as prepare_mod
from nmt.config import ConfigError, DataConfig
from nmt.data import EOS, DataError, prepare_data

EN = (
    "the a cat dog sees runs house tree big small red blue man woman child plays with on in".split()
)
DE = (
    "der die das Katze Hund sieht läuft Haus Baum groß klein rot blau Mann Frau Kind spielt mit auf"
).split()
SIZES = {"train": 300, "valid": 20, "test": 25}


def sentences(words: list[str], n: int, seed: int) -> list[str]:
    """n random sentences; the lengths depend on n only, so both sides of a split match."""
    lengths = random.Random(n).choices(range(3, 13), k=n)
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(k)) for k in lengths]


def write(path: Path, lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_corpus(root: Path) -> Path:
    """train as .gz, valid and test as plain text: both layouts in one corpus."""
    root.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(SIZES.items()):
        suffix = ".gz" if split == "train" else ""
        write(root / f"{split}.en{suffix}", sentences(EN, n, 2 * k))
        write(root / f"{split}.de{suffix}", sentences(DE, n, 2 * k + 1))
    return root


def config(root: Path, cache: Path, **kw) -> DataConfig:
    kw = {"vocab_size": 320, "spm_model_type": "bpe", **kw}
    return DataConfig(
        name="local", source="local", root=str(root), src="en", tgt="de", cache_dir=str(cache), **kw
    )


def assert_no_entry(cache: Path) -> None:
    """Nothing half-written: no data entry, nothing left in tmp/."""
    for sub in ("data", "tmp"):
        leftovers = list((cache / sub).iterdir()) if (cache / sub).exists() else []
        assert leftovers == [], leftovers


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "corpus")


def test_prepare_reads_encodes_and_round_trips(corpus, tmp_path):
    data = prepare_data(config(corpus, tmp_path / "cache"))
    assert not data.cache_hit
    assert {role: len(s) for role, s in data.splits.items()} == SIZES
    assert data.splits["valid"].name == "valid"
    test = data.splits["test"]
    expected_src = sentences(EN, 25, 4)
    assert list(test.src_text) == expected_src and list(test.tgt_text) == sentences(DE, 25, 5)
    for i in range(len(test)):
        assert test.src[i].dtype == np.int32 and int(test.src[i][-1]) == EOS
        assert EOS not in test.tgt[i].tolist()
        assert data.vocab.decode(test.src[i]) == expected_src[i]
        assert data.vocab.decode(test.tgt[i]) == test.tgt_text[i]
    assert data.splits["train"].src_text[0] == sentences(EN, 300, 0)[0]  # lazily read
    assert data.path.parent == tmp_path / "cache" / "data"


def test_second_call_is_a_cache_hit(corpus, tmp_path, monkeypatch):
    cfg = config(corpus, tmp_path / "cache")
    first = prepare_data(cfg)

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(prepare_mod, "train_vocabulary", fail)
    monkeypatch.setattr(prepare_mod, "_build", fail)
    second = prepare_data(cfg)
    assert second.cache_hit and second.path == first.path
    assert second.vocab.fingerprint == first.vocab.fingerprint
    assert all(
        np.array_equal(a, b)
        for a, b in zip(first.splits["train"].src, second.splits["train"].src, strict=True)
    )


def test_key_follows_content_and_filter_settings(corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    base = prepare_data(config(corpus, cache))
    calls = []
    real = prepare_mod.train_vocabulary
    monkeypatch.setattr(
        prepare_mod, "train_vocabulary", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    # a new filter setting re-encodes but reuses the SentencePiece model
    other = prepare_data(config(corpus, cache, max_len=8))
    assert not other.cache_hit and other.path != base.path and calls == []
    assert other.vocab.fingerprint == base.vocab.fingerprint
    assert len(other.splits["train"]) < len(base.splits["train"])
    # a changed training file trains a new vocabulary
    write(corpus / "train.de.gz", sentences(DE, 300, 99))
    changed = prepare_data(config(corpus, cache))
    assert not changed.cache_hit and changed.path != base.path and calls == [1]


def test_filters_count_and_log_but_never_touch_valid_and_test(tmp_path, caplog):
    root = make_corpus(tmp_path / "c")
    src, tgt = sentences(EN, 300, 0), sentences(DE, 300, 1)
    src[0] = ""  # empty source
    tgt[1] = "   "  # empty target (whitespace only)
    src[2] = " ".join(["house"] * 100)  # too long
    src[3], tgt[3] = "the cat", "der die das Katze Hund sieht läuft Haus Baum groß"  # ratio
    write(root / "train.en.gz", src)
    write(root / "train.de.gz", tgt)
    write(root / "valid.en", [""] + sentences(EN, 19, 2))  # an empty validation line stays
    with caplog.at_level(logging.INFO, logger="nmt.data"):
        data = prepare_data(config(root, tmp_path / "cache", max_len=80, max_len_ratio=3.0))
    f = data.meta["splits"]["train"]["filter"]
    assert (f["read"], f["empty"], f["too_long"], f["ratio"], f["kept"]) == (300, 2, 1, 1, 296)
    assert (
        "kept 296 of 300 pairs (dropped: 2 empty, 1 over max_len=80 subwords, 1 with length ratio"
        in caplog.text
    )
    assert src[4] == data.splits["train"].src_text[0]  # the filtered pairs are gone, order kept
    assert len(data.splits["valid"]) == 20 and data.splits["valid"].src_text[0] == ""


def test_crlf_and_unicode_line_separators_keep_alignment(tmp_path):
    root = make_corpus(tmp_path / "c")
    en = sentences(EN, 20, 2)
    en[3] = "the cat\u2028sees a dog"  # U+2028 must not start a new line
    (root / "valid.en").write_bytes(("\r\n".join(en) + "\r\n").encode())
    data = prepare_data(config(root, tmp_path / "cache"))
    assert len(data.splits["valid"]) == 20
    assert data.splits["valid"].src_text[3] == en[3] and data.splits["valid"].src_text[4] == en[4]


def entry_files(data) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(data.path.iterdir()) if f.name != "meta.json"}


@pytest.mark.parametrize("spm_max_sentences", [120, 2_000_000], ids=["spm-sample", "spm-all-pairs"])
def test_cache_files_do_not_depend_on_the_chunk_size(
    corpus, tmp_path, monkeypatch, spm_max_sentences
):
    """The training split is streamed in chunks: the SentencePiece sentences (a sample of 60
    pairs, or all non-empty pairs), the filter counts and every id and text file must come
    out as if it had been read whole."""
    src, tgt = sentences(EN, 300, 0), sentences(DE, 300, 1)
    for i in (3, 6, 7, 150):  # empty pairs, one at a chunk boundary of 7
        src[i] = ""
    tgt[299] = ""
    write(corpus / "train.en.gz", src)
    write(corpus / "train.de.gz", tgt)
    cfg = dict(max_len=9, spm_max_sentences=spm_max_sentences)
    whole = prepare_data(config(corpus, tmp_path / "whole", **cfg))
    monkeypatch.setattr(prepare_mod, "PREPARE_CHUNK_PAIRS", 7)  # 300 = 42 x 7 + 6
    chunked = prepare_data(config(corpus, tmp_path / "chunked", **cfg))
    counts = chunked.meta["splits"]["train"]["filter"]
    assert counts["empty"] == 5 and 0 < counts["too_long"] and 0 < counts["kept"] < 295
    assert entry_files(chunked) == entry_files(whole)
    assert chunked.meta["splits"] == whole.meta["splits"]


@pytest.mark.slow
def test_training_text_is_never_held_whole(tmp_path, monkeypatch):
    """Preparing a corpus allocates a bounded amount of Python memory per chunk, not per corpus."""
    import tracemalloc

    root = tmp_path / "big"
    root.mkdir()
    n = 40_000  # ~2.5 MB of text a side
    write(root / "train.en.gz", sentences(EN, n, 0))
    write(root / "train.de.gz", sentences(DE, n, 1))
    for split in ("valid", "test"):
        write(root / f"{split}.en", sentences(EN, 10, 2))
        write(root / f"{split}.de", sentences(DE, 10, 3))
    text_bytes = sum(len(line.encode()) + 1 for line in sentences(EN, n, 0) + sentences(DE, n, 1))
    monkeypatch.setattr(prepare_mod, "PREPARE_CHUNK_PAIRS", 1_000)
    tracemalloc.start()
    try:
        data = prepare_data(config(root, tmp_path / "cache", spm_max_sentences=2_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.meta["splits"]["train"]["filter"]["read"] == n
    # Reading the split whole peaked at 20x its text (its strings, then its ids as Python
    # ints); in chunks of 1,000 pairs the peak is ~1.1x, most of it independent of n.
    assert peak < 2 * text_bytes, f"peak {peak:,} B for {text_bytes:,} B of text"


def test_damaged_cache_entry_is_rebuilt(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "cache")
    first = prepare_data(cfg)
    (first.path / "test.src.ids.npy").unlink()
    again = prepare_data(cfg)
    assert not again.cache_hit and len(again.splits["test"]) == SIZES["test"]


# ------------------------------------------------------------------ bad input, one message each


def test_missing_root(tmp_path):
    with pytest.raises(
        DataError, match=r"data.root=.*nowhere is not a directory; set data.root=DIR"
    ):
        prepare_data(config(tmp_path / "nowhere", tmp_path / "cache"))
    assert_no_entry(tmp_path / "cache")


def test_missing_file_names_its_path(corpus, tmp_path):
    (corpus / "test.de").unlink()
    with pytest.raises(DataError) as err:
        prepare_data(config(corpus, tmp_path / "cache"))
    msg = str(err.value)
    assert f"missing file {corpus / 'test.de[.gz]'}" in msg and "split 'test' has only en" in msg
    assert_no_entry(tmp_path / "cache")


def test_unknown_split_lists_the_splits(corpus, tmp_path):
    with pytest.raises(
        DataError,
        match=r"unknown split 'dev' \(data.valid_split\).*splits in .* are test, train, valid",
    ):
        prepare_data(config(corpus, tmp_path / "cache", valid_split="dev"))
    assert_no_entry(tmp_path / "cache")


def test_unknown_language_pair_lists_the_languages(corpus, tmp_path):
    cfg = config(corpus, tmp_path / "cache")
    cfg.tgt = "fr"
    with pytest.raises(
        DataError, match=r"unknown language pair en-fr: .* languages in .* are de, en"
    ):
        prepare_data(cfg)
    assert_no_entry(tmp_path / "cache")


def test_different_line_counts_name_both_files_and_counts(corpus, tmp_path):
    write(corpus / "valid.de", sentences(DE, 19, 3))
    with pytest.raises(DataError) as err:
        prepare_data(config(corpus, tmp_path / "cache"))
    msg = str(err.value)
    assert f"{corpus / 'valid.en'} has 20 lines but {corpus / 'valid.de'} has 19" in msg
    assert_no_entry(tmp_path / "cache")


@pytest.mark.parametrize(
    "short,lines", [("de", 288), ("en", 294)], ids=["mid-chunk", "chunk-boundary"]
)
def test_training_files_of_different_lengths_count_whole_files(
    corpus, tmp_path, monkeypatch, short, lines
):
    """Read in chunks of 7, the message still gives each file's full line count."""
    monkeypatch.setattr(prepare_mod, "PREPARE_CHUNK_PAIRS", 7)
    words, seed = (DE, 1) if short == "de" else (EN, 0)
    write(corpus / f"train.{short}.gz", sentences(words, 300, seed)[:lines])
    counts = {"en": 300, "de": 300, short: lines}
    with pytest.raises(DataError) as err:
        prepare_data(config(corpus, tmp_path / "cache"))
    assert (
        f"{corpus / 'train.en.gz'} has {counts['en']} lines but {corpus / 'train.de.gz'} "
        f"has {counts['de']}"
    ) in str(err.value)
    assert_no_entry(tmp_path / "cache")


def test_a_file_of_only_a_byte_order_mark_has_no_lines(tmp_path):
    from nmt.textio import iter_lines

    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbf")
    (tmp_path / "bom-newline").write_bytes(b"\xef\xbb\xbf\n")
    (tmp_path / "bom-text").write_bytes("\ufeffKatze\r\nHund".encode())
    assert list(iter_lines(tmp_path / "bom")) == []
    assert list(iter_lines(tmp_path / "bom-newline")) == [""]
    assert list(iter_lines(tmp_path / "bom-text")) == ["Katze", "Hund"]


def test_invalid_utf8_names_file_and_line_before_any_work(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mod, "train_vocabulary", lambda *a, **k: pytest.fail("trained"))
    lines = sentences(DE, 300, 1)
    raw = "".join(line + "\n" for line in lines[:4]).encode() + "Müller\n".encode("latin-1")
    (corpus / "train.de.gz").write_bytes(gzip.compress(raw + "\n".join(lines[5:]).encode()))
    with pytest.raises(
        DataError, match=r"train.de.gz, line 5: invalid UTF-8 \(byte 0xfc at column 2\)"
    ):
        prepare_data(config(corpus, tmp_path / "cache"))
    assert_no_entry(tmp_path / "cache")


def test_empty_training_set(corpus, tmp_path):
    write(corpus / "train.en.gz", [""] * 300)
    with pytest.raises(
        DataError, match="'train' is empty after filtering: all 300 pairs have an empty side"
    ):
        prepare_data(config(corpus, tmp_path / "cache"))
    assert_no_entry(tmp_path / "cache")


def test_empty_training_set_after_length_filter(corpus, tmp_path):
    with pytest.raises(
        DataError,
        match=r"empty after filtering: of 300 pairs, 0 are empty, 300 exceed data.max_len=2",
    ):
        prepare_data(config(corpus, tmp_path / "cache", max_len=2))
    assert_no_entry(tmp_path / "cache")


def test_unset_environment_variable_for_root(tmp_path, monkeypatch):
    from nmt.config import compose

    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    cfg = compose(["data=multi30k", f"data.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.root cannot be resolved .*NMT_DATA_DIR"):
        prepare_data(cfg.data)


def _prepare_in_child(root: str, cache: str, count: str, results) -> None:
    """Run in a forked process: prepare with a slowed-down SentencePiece training."""
    import time

    real = prepare_mod.train_vocabulary

    def slow(*args, **kwargs):
        with open(count, "a") as f:
            f.write("x")
        time.sleep(1.0)  # widen the window in which the other process must wait
        return real(*args, **kwargs)

    prepare_mod.train_vocabulary = slow
    results.put(prepare_data(config(Path(root), Path(cache))).cache_hit)


def test_concurrent_processes_build_once(corpus, tmp_path):
    """Two processes start together; one trains and encodes, the other waits and loads."""
    ctx = multiprocessing.get_context("fork")  # fork: no second import of torch, a fast test
    results = ctx.Queue()
    args = (str(corpus), str(tmp_path / "cache"), str(tmp_path / "trainings"), results)
    procs = [ctx.Process(target=_prepare_in_child, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(results.get(timeout=1) for _ in procs) == [False, True]
    assert (tmp_path / "trainings").read_text() == "x"  # SentencePiece trained once
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1


@pytest.mark.parametrize("role", ["valid", "test"])
def test_empty_validation_or_test_split_is_refused_before_any_work(
    corpus, tmp_path, monkeypatch, capsys, role
):
    """An empty split would train for hours, then divide by zero sentences at validation."""
    from nmt.data.__main__ import main as stats_main

    monkeypatch.setattr(prepare_mod, "train_vocabulary", lambda *a, **k: pytest.fail("trained"))
    write(corpus / f"{role}.en", [])
    write(corpus / f"{role}.de", [])
    name = "validation" if role == "valid" else "test"
    message = (
        f"the {name} split '{role}' (data.{role}_split) is empty: {corpus / f'{role}.en'} and "
        f"{corpus / f'{role}.de'} have no lines; add sentence pairs to it or set "
        f"data.{role}_split to a split that has them"
    )
    with pytest.raises(DataError) as err:
        prepare_data(config(corpus, tmp_path / "cache"))
    assert str(err.value) == message
    assert_no_entry(tmp_path / "cache")
    # `python -m nmt.data` says it in one line, exit status 2
    overrides = ["data=local", f"data.root={corpus}", "data.src=en", "data.tgt=de"]
    assert stats_main([*overrides, f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_killed_builds_leave_nothing_the_next_run_keeps(corpus, tmp_path):
    """A build killed mid-way leaves tmp/<entry>.<pid>.<rand>@<host>/; the next prepare_data
    removes it when its process is gone, and leaves live builds and other hosts' alone."""
    from nmt.data.cache_dirs import host_tag

    cache = tmp_path / "cache"
    dead = _dead_pid()
    host, live = host_tag(), os.getpid()
    names = {
        f"local-en-de-aaaa.{dead}.0123abcd@{host}": False,  # killed here: removed
        f"local-en-de-bbbb.{live}.0123abcd@{host}": True,  # still building: kept
        f"local-en-de-cccc.{dead}.0123abcd@another-host": True,  # its pid means nothing here
        f"local-en-de-dddd.{dead}.0123abcd": False,  # a name of before the host was in it
        f"local-en-de-eeee.{live}.0123abcd": True,
        "local-en-de-ffff.trash.0123abcd": False,  # a deletion killed half-way
        "someone-elses-file": True,
    }
    for name in names:
        (cache / "tmp" / name).mkdir(parents=True)
        (cache / "tmp" / name / "train.src.ids.npy.part").write_bytes(b"\0" * 1000)
    prepare_data(config(corpus, cache))
    kept = {path.name for path in (cache / "tmp").iterdir()}
    assert kept == {name for name, keep in names.items() if keep}


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
