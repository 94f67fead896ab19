"""The encoder-decoder Transformer: embeddings, layers, incremental decoding, `build_model`.

`python -m nmt.model model=base encoding=relative vocab_size=32768` prints parameter counts.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.attention import KeyValueCache, MultiHeadAttention
from nmt.config_checks import validate
from nmt.dropout import dropout as apply_dropout
from nmt.encodings import (
    AttentionPositions,
    AttentionShape,
    InputPositions,
    build_attention_positions,
    build_input_positions,
)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.activation_dropout = activation_dropout
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = apply_dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


class Residual(nn.Module):
    """x + dropout(f(x)) with layer norm after (post-norm, the paper) or before (pre-norm)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout, self.pre_norm = dropout, pre_norm

    def forward(self, x: Tensor, sublayer: Any) -> Tensor:
        if self.pre_norm:
            return x + apply_dropout(sublayer(self.norm(x)), self.dropout, self.training)
        return self.norm(x + apply_dropout(sublayer(x), self.dropout, self.training))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Any, positions: AttentionPositions | None) -> None:
        super().__init__()
        m, pre = cfg, cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(m.d_model, m.heads, m.attention_dropout, positions)
        self.ffn = FeedForward(m.d_model, m.d_ff, m.activation_dropout)
        self.attn_block = Residual(m.d_model, m.dropout, pre)
        self.ffn_block = Residual(m.d_model, m.dropout, pre)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, key_padding_mask=pad_mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Any, positions: AttentionPositions | None) -> None:
        super().__init__()
        m, pre = cfg, cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(m.d_model, m.heads, m.attention_dropout, positions)
        # Cross-attention has no position term, as in the paper.
        self.cross_attn = MultiHeadAttention(m.d_model, m.heads, m.attention_dropout, None)
        self.ffn = FeedForward(m.d_model, m.d_ff, m.activation_dropout)
        self.self_block = Residual(m.d_model, m.dropout, pre)
        self.cross_block = Residual(m.d_model, m.dropout, pre)
        self.ffn_block = Residual(m.d_model, m.dropout, pre)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_pad_mask: Tensor,
        self_cache: KeyValueCache | None = None,
        cross_cache: KeyValueCache | None = None,
    ) -> Tensor:
        x = self.self_block(x, lambda h: self.self_attn(h, causal=True, cache=self_cache))
        x = self.cross_block(x, lambda h: self._cross(h, memory, memory_pad_mask, cross_cache))
        return self.ffn_block(x, self.ffn)

    def _cross(
        self, h: Tensor, memory: Tensor, pad_mask: Tensor, cache: KeyValueCache | None
    ) -> Tensor:
        """Cross-attention of `h (n*r, T, D)` to `memory (n, S, D)`: the r rows of a memory
        row (a sentence's beams) are one attention with r*T queries over the same keys, so
        beam search keeps the memory and its keys per sentence, not per beam. Exact:
        cross-attention has no position term, each query attends on its own."""
        n = memory.size(0)
        out = self.cross_attn(
            h.reshape(n, -1, h.size(-1)), memory, key_padding_mask=pad_mask, cache=cache
        )
        return out.reshape(h.shape)


class DecoderCache:
    """Everything incremental decoding keeps between steps.

    Decoder rows are (sentence x beam), sentence-major; the memory, its padding mask and
    the cross-attention keys are kept once per memory row, which serves `rows // n`
    consecutive decoder rows (a sentence's beams). Re-ranking the beams of a sentence then
    moves only the self-attention caches; the memory moves when sentences leave.
    """

    def __init__(self, memory: Tensor, memory_pad_mask: Tensor, layers: int) -> None:
        self.memory, self.memory_pad_mask = memory, memory_pad_mask  # (n, S, D), (n, S)
        self.rows = memory.size(0)  # decoder rows, a multiple of the memory rows
        self.self_attn = [KeyValueCache() for _ in range(layers)]
        self.cross_attn = [KeyValueCache() for _ in range(layers)]

    @property
    def length(self) -> int:
        """Target positions decoded so far (the position of the next token)."""
        return self.self_attn[0].length

    def reorder(self, indices: Tensor) -> None:
        """Keep decoder rows `indices` (may repeat rows, e.g. to expand to beams, or drop them)."""
        n = self.memory.size(0)
        memory_of_row = indices // (self.rows // n)  # (R',) the memory row each new row reads
        kept = torch.unique_consecutive(memory_of_row)
        per_row = indices.numel() // kept.numel()
        grouped = per_row * kept.numel() == indices.numel() and torch.equal(
            memory_of_row, kept.repeat_interleave(per_row)
        )
        # Rows that do not come in equal consecutive groups get a memory row each.
        memory_rows = kept if grouped else memory_of_row
        same = grouped and torch.equal(memory_rows, torch.arange(n, device=indices.device))
        if not same:  # sentences left or moved, or rows regrouped
            self.memory = self.memory.index_select(0, memory_rows)
            self.memory_pad_mask = self.memory_pad_mask.index_select(0, memory_rows)
            for cache in self.cross_attn:
                cache.reorder(memory_rows)
        for cache in self.self_attn:
            cache.reorder(indices)
        self.rows = indices.numel()


class Transformer(nn.Module):
    """Encoder-decoder Transformer over one shared vocabulary with tied embeddings."""

    def __init__(self, cfg: Any, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        m, enc = cfg.model, cfg.encoding
        self.d_model, self.pad_id, self.vocab_size = m.d_model, pad_id, vocab_size
        # Independent of the encoding: tying it to the sinusoids would silently change the
        # embedding scale of relative-only models.
        self.embed_scale = math.sqrt(m.d_model)
        self.embedding = nn.Embedding(vocab_size, m.d_model, padding_idx=pad_id)
        nn.init.normal_(self.embedding.weight, std=m.init_std or m.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[pad_id].zero_()
        self.output_projection = None
        if not m.tie_embeddings:
            self.output_projection = nn.Linear(m.d_model, vocab_size, bias=False)
        d_head = m.d_model // m.heads
        self.src_positions: InputPositions | None = build_input_positions(enc, m.d_model)
        self.tgt_positions: InputPositions | None = build_input_positions(enc, m.d_model)
        encoder_positions = build_attention_positions(
            enc, AttentionShape(m.heads, d_head, m.encoder_layers, causal=False)
        )
        decoder_positions = build_attention_positions(
            enc, AttentionShape(m.heads, d_head, m.decoder_layers, causal=True)
        )
        self.encoder_layers = nn.ModuleList(EncoderLayer(m, p) for p in encoder_positions)
        self.decoder_layers = nn.ModuleList(DecoderLayer(m, p) for p in decoder_positions)
        pre = m.norm == "pre"  # pre-norm stacks end with a layer norm; post-norm already did
        self.encoder_norm = nn.LayerNorm(m.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(m.d_model) if pre else nn.Identity()
        self.dropout = m.dropout

    def _embed(self, tokens: Tensor, positions: InputPositions | None, offset: int = 0) -> Tensor:
        x = self.embedding(tokens) * self.embed_scale  # (B, N, D)
        if positions is not None:
            x = positions(x, offset)
        return apply_dropout(x, self.dropout, self.training)

    @property
    def output_weight(self) -> Tensor:
        """The output projection `(V, D)`: the embedding table when the two are tied."""
        if self.output_projection is None:
            return self.embedding.weight
        return self.output_projection.weight

    def _logits(self, h: Tensor) -> Tensor:
        return h @ self.output_weight.t()

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src `(B, S)` ids -> memory `(B, S, D)` and its padding mask `(B, S)` (True = pad)."""
        pad_mask = src.eq(self.pad_id)
        x = self._embed(src, self.src_positions)
        for layer in self.encoder_layers:
            x = layer(x, pad_mask)
        return self.encoder_norm(x), pad_mask

    def decode(
        self, tgt_in: Tensor, memory: Tensor, memory_pad_mask: Tensor, project: bool = True
    ) -> Tensor:
        """Teacher-forced decoder: tgt_in `(B, T)` -> logits `(B, T, V)`, or with
        `project=False` the final states `(B, T, D)` the logits are projected from."""
        x = self._embed(tgt_in, self.tgt_positions)
        for layer in self.decoder_layers:
            x = layer(x, memory, memory_pad_mask)
        states = self.decoder_norm(x)
        return self._logits(states) if project else states

    def forward(self, src: Tensor, tgt_in: Tensor, project: bool = True) -> Tensor:
        """Logits `(B, T, V)` for the next token at every target position; `project=False`:
        the decoder's final states `(B, T, D)`, for a loss that projects them itself
        (`objective.projected_label_smoothed_loss`)."""
        memory, pad_mask = self.encode(src)
        return self.decode(tgt_in, memory, pad_mask, project)

    def start_decoding(self, memory: Tensor, memory_pad_mask: Tensor) -> DecoderCache:
        """An empty cache for incremental decoding over an encoded batch."""
        return DecoderCache(memory, memory_pad_mask, len(self.decoder_layers))

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed the token at position `cache.length` `(B,)`; logits for the next one `(B, V)`."""
        x = self._embed(tokens.unsqueeze(1), self.tgt_positions, offset=cache.length)
        for layer, self_cache, cross_cache in zip(
            self.decoder_layers, cache.self_attn, cache.cross_attn, strict=True
        ):
            x = layer(x, cache.memory, cache.memory_pad_mask, self_cache, cross_cache)
        return self._logits(self.decoder_norm(x)).squeeze(1)


def build_model(cfg: Any, vocab_size: int, pad_id: int = 0) -> Transformer:
    """A `Transformer` from a config with `model` and `encoding` sections (validated first)."""
    validate(cfg)
    return Transformer(cfg, vocab_size, pad_id)


def parameter_counts(model: Transformer) -> dict[str, int]:
    """Parameters by part: embeddings, encoder, decoder, position terms, total."""
    counts = {"embeddings": 0, "encoder": 0, "decoder": 0, "positions": 0}
    for name, p in model.named_parameters():
        if "positions" in name:
            counts["positions"] += p.numel()
        elif name.startswith(("embedding", "output_projection")):
            counts["embeddings"] += p.numel()
        elif name.startswith("encoder"):
            counts["encoder"] += p.numel()
        else:
            counts["decoder"] += p.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def main(argv: list[str] | None = None) -> None:
    """Print parameter counts for a composed config (`vocab_size=N` sets the vocabulary)."""
    from nmt.config import compose

    args = list(sys.argv[1:] if argv is None else argv)
    vocab = 32768
    for arg in list(args):
        if arg.startswith("vocab_size="):
            vocab = int(arg.split("=", 1)[1])
            args.remove(arg)
    cfg = compose(args)
    counts = parameter_counts(build_model(cfg, vocab))
    print(f"model={cfg.model.name} encoding={cfg.encoding.name} vocab_size={vocab}")
    for part, n in counts.items():
        print(f"  {part:<11} {n:>12,}")


if __name__ == "__main__":
    main()
