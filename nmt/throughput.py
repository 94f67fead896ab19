"""What the speed benchmarks share: the batches they time, the FLOPs of a training step and
the matmul peak that model FLOPs utilisation is measured against."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nmt.config import compose
from nmt.data import EncodedSplit, prepare_data, train_vocabulary
from nmt.data.batching import Batch, collate, split_batches
from nmt.runtime import synchronize

# The corpora a benchmark can time: Multi30k training pairs (short captions) and
# newstest2014 EN-DE (WMT sentence lengths).
CORPORA = ("multi30k", "newstest")
NEWSTEST_VOCAB_SIZE = 8000  # the same vocabulary size as data=multi30k


def matmul_peak_flops(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5
) -> float:
    """Best FLOP/s of a square matmul in `dtype` on this device and thread count."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(cfg: Any, counts: dict[str, int], batch: Batch) -> float:
    """~6 FLOPs per weight per token it sees (forward 2, backward 4): encoder weights see the
    (padded) source, decoder weights and the tied output projection the target; plus the
    attention score and weighted-sum matmuls (4 * Nq * Nk * d per layer forward, x3)."""
    B, S = batch.src.shape
    T, d = batch.tgt_in.size(1), cfg.model.d_model
    dense = 6 * (counts["encoder"] * B * S + (counts["decoder"] + counts["embeddings"]) * B * T)
    layers = cfg.model.encoder_layers * S * S + cfg.model.decoder_layers * (T * T + T * S)
    attn = 3 * 4 * B * d * layers
    return dense + attn


def newstest_split(data_dir: Path, vocab_size: int, work: Path) -> tuple[EncodedSplit, int]:
    """newstest2014 EN-DE as a split, with a SentencePiece model trained on it; (split, vocab
    size)."""
    en = (data_dir / "wmt14" / "newstest2014.en").read_text(encoding="utf-8").splitlines()
    de = (data_dir / "wmt14" / "newstest2014.de").read_text(encoding="utf-8").splitlines()
    vocab = train_vocabulary(en + de, work / "spm.model", vocab_size=vocab_size)
    return EncodedSplit.from_texts(vocab, en, de, name="newstest2014"), vocab.size


def benchmark_batches(
    corpus: str, data_dir: Path, max_tokens: int, count: int, device: torch.device
) -> tuple[list[Batch], int]:
    """The first `count` training batches of <= `max_tokens` padded positions of `corpus`
    (one of CORPORA), on `device`; (batches, vocabulary size)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}")
    with tempfile.TemporaryDirectory() as work:
        if corpus == "multi30k":
            data = prepare_data(compose(["data=multi30k"]).data)
            split, vocab_size = data.splits["train"], data.vocab.size
        else:
            split, vocab_size = newstest_split(data_dir, NEWSTEST_VOCAB_SIZE, Path(work))
    batches = [
        collate(split, idx).to(device)
        for idx in split_batches(split, max_tokens, seed=0, epoch=0)[:count]
    ]
    return batches, vocab_size
