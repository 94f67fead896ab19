"""The data layer: corpora -> SentencePiece ids (cached) -> token-budget batches.

    from nmt.data import prepare_data, token_budget_batches, collate
    data = prepare_data(cfg.data)          # PreparedData: .vocab, .splits["train"|"valid"|"test"]
    train = data.splits["train"]
    for idx in split_batches(train, 4096, seed=1, epoch=0):   # or token_budget_batches(...)
        batch = collate(train, idx)        # Batch: src, tgt_in, tgt_out, ...

Special ids are the same for every vocabulary: PAD=0, UNK=1, BOS=2, EOS=3.
"""

from nmt.data.batching import Batch, collate, split_batches, token_budget_batches
from nmt.data.corpora import ROLES
from nmt.data.errors import DataError
from nmt.data.prepare import PreparedData, load_prepared, prepare_data, resolve_data_config
from nmt.data.store import EncodedSplit, RaggedIds
from nmt.data.vocab import BOS, EOS, PAD, UNK, Vocabulary, train_vocabulary

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "ROLES",
    "UNK",
    "Batch",
    "DataError",
    "EncodedSplit",
    "PreparedData",
    "RaggedIds",
    "Vocabulary",
    "collate",
    "load_prepared",
    "prepare_data",
    "resolve_data_config",
    "split_batches",
    "token_budget_batches",
    "train_vocabulary",
]
