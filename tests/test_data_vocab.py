"""The SentencePiece vocabulary: fixed special ids, encode/decode, fingerprint, size errors."""

from __future__ import annotations

import io
import pickle

import pytest
import sentencepiece as spm

from nmt.data import BOS, EOS, PAD, UNK, DataError, Vocabulary, train_vocabulary

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy dog sleeps in the sun",
    "the fox and the dog are friends",
    "über den Wolken muss die Freiheit wohl grenzenlos sein",
] * 30


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Vocabulary:
    path = tmp_path_factory.mktemp("vocab") / "spm.model"
    return train_vocabulary(SENTENCES, path, vocab_size=300, model_type="bpe")


def test_special_ids_are_fixed(vocab):
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert [vocab.piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert vocab.size == len(vocab) == 300


def test_round_trip_and_byte_fallback(vocab):
    for text in ["the quick brown fox", "über die Freiheit", "ein Zebra 🦓 läuft"]:
        ids = vocab.encode(text)
        assert BOS not in ids and EOS not in ids
        assert vocab.decode(ids) == text
    # unseen characters become byte pieces, not <unk>
    assert UNK not in vocab.encode("🦓 ß ŋ")
    assert vocab.uncovered_mask()[vocab.encode("🦓")].sum() == 4  # its 4 UTF-8 bytes
    assert not vocab.uncovered_mask()[vocab.encode("the")].any()


def test_decode_stops_at_eos_and_skips_pad_bos(vocab):
    ids = vocab.encode("the lazy dog")
    assert vocab.decode([BOS, *ids, EOS, *vocab.encode("fox"), PAD]) == "the lazy dog"
    assert vocab.decode([BOS, *ids, PAD, PAD]) == "the lazy dog"
    assert vocab.decode_batch([[EOS], ids]) == ["", "the lazy dog"]


def test_load_fingerprint_and_pickle(vocab, tmp_path):
    again = Vocabulary.load(vocab.path)
    assert again.fingerprint == vocab.fingerprint and again.path == vocab.path
    other = train_vocabulary(SENTENCES, tmp_path / "o.model", vocab_size=290, model_type="bpe")
    assert other.fingerprint != vocab.fingerprint
    clone = pickle.loads(pickle.dumps(vocab))
    assert (
        clone.encode("the dog") == vocab.encode("the dog")
        and clone.fingerprint == vocab.fingerprint
    )
    stored = Vocabulary.from_bytes(vocab.model_bytes)  # what a checkpoint keeps
    assert stored == vocab and stored.path is None and stored.fingerprint == vocab.fingerprint
    assert stored != other
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Vocabulary.from_bytes(b"garbage")


def test_missing_or_foreign_model_is_rejected(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "nope.model")
    writer = io.BytesIO()  # SentencePiece defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=writer, vocab_size=40, minloglevel=2
    )
    (tmp_path / "foreign.model").write_bytes(writer.getvalue())
    with pytest.raises(DataError, match="special ids"):
        Vocabulary.load(tmp_path / "foreign.model")


def test_vocab_size_too_large_or_too_small_says_what_to_set(tmp_path):
    with pytest.raises(DataError, match=r"data.vocab_size=5000 is too large .* at most \d+"):
        train_vocabulary(SENTENCES, tmp_path / "a.model", vocab_size=5000, model_type="bpe")
    with pytest.raises(DataError, match=r"data.vocab_size=262 is too small .*>=\d+"):
        train_vocabulary(SENTENCES, tmp_path / "b.model", vocab_size=262, model_type="unigram")
    assert not (tmp_path / "a.model").exists() and not (tmp_path / "b.model").exists()
