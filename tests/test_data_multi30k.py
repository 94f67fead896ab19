"""Multi30k from ../shared/data (skipped when absent): counts, round trip, cache, batches, stats."""

from __future__ import annotations

import gzip

import pytest

import nmt.data.prepare as prepare_mod
from nmt.config import compose
from nmt.data import collate, prepare_data
from nmt.data.__main__ import main as stats_main
from nmt.data.batching import split_batches

COUNTS = {"train": 29000, "valid": 1014, "test": 1000}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("m30k-cache")


def overrides(multi30k_dir, cache, *extra):
    return ["data=multi30k", f"data.root={multi30k_dir}", f"data.cache_dir={cache}", *extra]


@pytest.fixture
def m30k(multi30k_dir, cache):
    """The default data=multi30k config, prepared once for this module (about 3 s from scratch)."""
    return prepare_data(compose(overrides(multi30k_dir, cache)).data)


def test_line_counts_and_split_names(m30k):
    meta = m30k.meta["splits"]
    assert {role: meta[role]["filter"]["read"] for role in COUNTS} == COUNTS
    assert len(m30k.splits["valid"]) == 1014 and len(m30k.splits["test"]) == 1000  # never filtered
    assert 28900 < len(m30k.splits["train"]) <= 29000
    assert (m30k.splits["valid"].name, m30k.splits["test"].name) == ("val", "test_2016_flickr")
    assert m30k.vocab.size == 8000


def test_detokenisation_round_trips(m30k, multi30k_dir):
    ref = (
        gzip.open(multi30k_dir / "test_2016_flickr.de.gz", "rt", encoding="utf-8")
        .read()
        .split("\n")
    )
    test = m30k.splits["test"]
    assert list(test.tgt_text) == [line.strip() for line in ref[:1000]]
    exact = 0
    for split in m30k.splits.values():
        for ids_side, text_side in ((split.src, split.src_text), (split.tgt, split.tgt_text)):
            for ids, text in zip(ids_side, text_side, strict=True):
                decoded = m30k.vocab.decode(ids)
                # SentencePiece collapses runs of spaces; everything else comes back unchanged
                assert decoded == " ".join(text.split())
                exact += decoded == text
    assert exact > 0.99 * 2 * sum(len(s) for s in m30k.splits.values())


def test_second_prepare_is_a_cache_hit(m30k, multi30k_dir, cache, monkeypatch):
    monkeypatch.setattr(prepare_mod, "_build", lambda *a, **k: pytest.fail("rebuilt"))
    again = prepare_data(compose(overrides(multi30k_dir, cache)).data)
    assert again.cache_hit and again.path == m30k.path


def test_batches_within_budget_cover_train_once(m30k):
    train = m30k.splits["train"]
    batches = split_batches(train, 4096, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(train)))
    for idx in batches:
        b = collate(train, idx)
        assert b.src.numel() + b.tgt_in.numel() <= 4096


def test_english_french(multi30k_dir, cache):
    cfg = compose(overrides(multi30k_dir, cache, "data.tgt=fr", "data.spm_model_type=bpe")).data
    data = prepare_data(cfg)
    assert len(data.splits["test"]) == 1000
    assert data.splits["test"].tgt_text[0].startswith("Un homme")


def test_stats_command(m30k, multi30k_dir, cache, capsys):
    assert stats_main(overrides(multi30k_dir, cache)) == 0
    out = capsys.readouterr().out
    assert str(m30k.path) in out and "(hit)" in out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["train"], ["valid"], ["test"])
    }
    assert rows["valid"][1:3] == ["val", "1014"] and rows["test"][1:3] == [
        "test_2016_flickr",
        "1000",
    ]
    assert 10 < float(rows["test"][3]) < 25 and 99.0 < float(rows["test"][7]) <= 100.0


def test_stats_command_reports_bad_config(tmp_path, capsys):
    assert stats_main(["data=multi30k", f"data.root={tmp_path}", f"data.cache_dir={tmp_path}"]) == 2
    assert "holds no {split}.{lang} files" in capsys.readouterr().err
