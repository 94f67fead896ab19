"""The special token ids, the same for every vocabulary (`nmt.data.vocab` trains them so)."""

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")
