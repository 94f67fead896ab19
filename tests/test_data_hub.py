"""The `datasets` source, on local copies in the hub's formats (the hub itself is unreachable)."""

from __future__ import annotations

import datasets
import pytest

from nmt.config import compose
from nmt.data import DataError, prepare_data

PAIRS = {
    "train": [("the cat sits", "die Katze sitzt"), ("a dog runs", "ein Hund läuft")] * 40,
    "validation": [("the dog sits", "der Hund sitzt"), ("a cat\nruns", "eine Katze läuft")],
    "test": [("the cat runs", "die Katze läuft")] * 3,
}


def dataset_dict(per_language_columns: bool = False) -> datasets.DatasetDict:
    splits = {}
    for split, pairs in PAIRS.items():
        if per_language_columns:
            splits[split] = datasets.Dataset.from_dict(
                {"en": [e for e, _ in pairs], "de": [d for _, d in pairs]}
            )
        else:
            features = datasets.Features(
                {"translation": datasets.Translation(languages=["de", "en"])}
            )
            rows = [{"en": e, "de": d} for e, d in pairs]
            splits[split] = datasets.Dataset.from_dict({"translation": rows}, features=features)
    return datasets.DatasetDict(splits)


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    # load_dataset on parquet files converts them into the datasets cache: keep it in tmp
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")


def hub_cfg(name, cache, *extra):
    return compose(
        [
            "data=hub",
            f"data.hub_name={name}",
            f"data.cache_dir={cache}",
            "data.vocab_size=300",
            "data.spm_model_type=bpe",
            *extra,
        ]
    ).data


def check(data):
    assert {role: len(s) for role, s in data.splits.items()} == {"train": 80, "valid": 2, "test": 3}
    valid = data.splits["valid"]
    assert list(valid.src_text) == ["the dog sits", "a cat runs"]  # newline inside made a space
    assert list(valid.tgt_text) == ["der Hund sitzt", "eine Katze läuft"]
    assert data.vocab.decode(valid.tgt[1]) == "eine Katze läuft"


def test_save_to_disk_copy(tmp_path):
    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    cfg = hub_cfg(tmp_path / "saved", tmp_path / "cache")
    check(prepare_data(cfg))
    assert prepare_data(cfg).cache_hit


def test_parquet_files_and_reverse_direction(tmp_path):
    root = tmp_path / "pq" / "de-en"  # the hub's own layout: one directory per subset
    root.mkdir(parents=True)
    for split, ds in dataset_dict().items():
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    data = prepare_data(hub_cfg(tmp_path / "pq", tmp_path / "cache", "data.hub_config=de-en"))
    check(data)
    rev = prepare_data(
        hub_cfg(
            tmp_path / "pq",
            tmp_path / "cache",
            "data.hub_config=de-en",
            "data.src=de",
            "data.tgt=en",
        )
    )
    assert rev.splits["test"].src_text[0] == "die Katze läuft" and rev.path != data.path


def test_chunks_are_the_split_in_order(tmp_path):
    """Training text is streamed in chunks; a shuffled view (an indices mapping) too."""
    from nmt.data.corpora import HubCorpus

    rows = [{"en": f"sentence {i}", "de": f"Satz {i}"} for i in range(23)]
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    ds = datasets.Dataset.from_dict({"translation": rows}, features=features)
    datasets.DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(
        str(tmp_path / "saved")
    )
    corpus = HubCorpus(
        str(tmp_path / "saved"),
        None,
        "en",
        "de",
        {"train": "train", "valid": "validation", "test": "test"},
    )
    corpus.dataset["train"] = corpus.dataset["train"].shuffle(seed=0)
    whole = corpus.read("train")
    assert sorted(whole.src) == sorted(r["en"] for r in rows) and whole.src != [
        r["en"] for r in rows
    ]
    chunks = list(corpus.chunks("train", 5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert [s for c in chunks for s in c.src] == whole.src
    assert [t for c in chunks for t in c.tgt] == whole.tgt
    assert all(t == "Satz " + s.split()[1] for s, t in zip(whole.src, whole.tgt, strict=True))


def test_one_column_per_language(tmp_path):
    dataset_dict(per_language_columns=True).save_to_disk(str(tmp_path / "cols"))
    check(prepare_data(hub_cfg(tmp_path / "cols", tmp_path / "cache")))


def test_unknown_split_and_language_pair(tmp_path):
    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(
        DataError,
        match=r"unknown split 'valid' \(data.valid_split\) .* it has test, train, validation",
    ):
        prepare_data(hub_cfg(tmp_path / "saved", tmp_path / "cache", "data.valid_split=valid"))
    with pytest.raises(DataError, match="unknown language pair en-fr .* it has de, en"):
        prepare_data(hub_cfg(tmp_path / "saved", tmp_path / "cache", "data.tgt=fr"))
    assert not (tmp_path / "cache" / "data").exists()


def test_unreachable_dataset_says_how_to_work_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataError, match="cannot load dataset data.hub_name='wmt/wmt14'.*local copy"
    ):
        prepare_data(compose(["data=wmt14_en_de", f"data.cache_dir={tmp_path}"]).data)
