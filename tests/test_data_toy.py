"""The built-in toy task: its rule, determinism, lengths, and that it needs word order."""

from __future__ import annotations

import dataclasses

import pytest

from nmt.config import ConfigError, DataConfig, ToyConfig, compose
from nmt.data import DataError, prepare_data
from nmt.data.corpora import ToyCorpus, toy_lexicon, toy_translate, toy_words

SPLITS = {"train": "train", "valid": "valid", "test": "test"}


def corpus(**overrides) -> ToyCorpus:
    return ToyCorpus(dataclasses.asdict(ToyConfig(**overrides)), "src", "tgt", SPLITS)


def test_rule_translates_then_reverses_each_chunk():
    lex = {w: w.upper() for w in "abcdefg"}
    assert toy_translate(list("abcdefg"), lex, 3) == list("CBAFEDG")
    assert toy_translate(list("abcd"), lex, 2) == list("BADC")
    assert toy_translate(list("abc"), lex, 1) == list("ABC")


def test_generated_pairs_follow_the_rule_and_are_deterministic():
    toy = ToyConfig()
    lex = toy_lexicon(toy.vocab, toy.seed)
    assert len(set(lex.values())) == toy.vocab  # a bijection
    assert not set(lex.values()) & set(toy_words(toy.vocab))  # target words are other strings
    text = corpus().read("train")
    assert len(text) == toy.train_size
    for s, t in zip(text.src[:200], text.tgt[:200], strict=True):
        assert t.split() == toy_translate(s.split(), lex, toy.chunk)
    again = corpus().read("train")
    assert again.src == text.src and again.tgt == text.tgt
    assert corpus(seed=5).read("train").src != text.src


def test_word_order_matters():
    """Two sources with the same words in another order have different targets."""
    lex = toy_lexicon(32, 1234)
    words = toy_words(32)[:6]
    assert sorted(toy_translate(words, lex, 3)) == sorted(toy_translate(words[::-1], lex, 3))
    assert toy_translate(words, lex, 3) != toy_translate(words[::-1], lex, 3)
    # and the output is not simply the input order nor simply reversed
    mapped = [lex[w] for w in words]
    assert toy_translate(words, lex, 3) not in (mapped, mapped[::-1])


def test_lengths_cover_the_configured_ranges():
    c = corpus(
        min_len=3, max_len=8, test_min_len=10, test_max_len=14, valid_size=300, test_size=300
    )
    for split, (lo, hi) in {"train": (3, 8), "valid": (3, 8), "test": (10, 14)}.items():
        lengths = {len(s.split()) for s in c.read(split).src}
        assert lengths == set(range(lo, hi + 1)), split


def test_unknown_split_or_language_pair():
    with pytest.raises(
        DataError, match=r"unknown split 'dev' \(data.valid_split\).*train, valid, test"
    ):
        ToyCorpus(dataclasses.asdict(ToyConfig()), "src", "tgt", {**SPLITS, "valid": "dev"})
    with pytest.raises(DataError, match="unknown language pair en-de .* src and tgt"):
        ToyCorpus(dataclasses.asdict(ToyConfig()), "en", "de", SPLITS)


def test_default_toy_config_prepares_with_one_piece_per_word(tmp_path):
    cfg = compose([f"data.cache_dir={tmp_path}"])
    data = prepare_data(cfg.data)
    assert {k: len(v) for k, v in data.splits.items()} == {
        "train": 20000,
        "valid": 500,
        "test": 500,
    }
    test = data.splits["test"]
    for i in range(50):
        assert len(test.src[i]) - 1 == len(test.src_text[i].split())  # minus EOS
        assert len(test.tgt[i]) == len(test.tgt_text[i].split())
        assert data.vocab.decode(test.tgt[i]) == test.tgt_text[i]
    assert prepare_data(cfg.data).cache_hit


def test_inverse_direction_swaps_the_sides(tmp_path):
    fwd = corpus().read("valid")
    inv = ToyCorpus(dataclasses.asdict(ToyConfig()), "tgt", "src", SPLITS).read("valid")
    assert inv.src == fwd.tgt and inv.tgt == fwd.src


def test_bad_toy_config_is_a_config_error(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), toy=ToyConfig(min_len=9, max_len=4))
    with pytest.raises(ConfigError, match="data.toy.min_len=9"):
        prepare_data(cfg)
    assert not any(tmp_path.iterdir())
