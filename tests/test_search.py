"""Greedy and beam search: exact behaviour on a hand-written "model", invariants on real ones."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from nmt.config import DecodeConfig, compose, decode_settings
from nmt.config_checks import validate
from nmt.data.vocab import BOS, EOS, PAD, UNK
from nmt.errors import ConfigError
from nmt.model import build_model
from nmt.presets import training_presets
from nmt.search import (
    Hypothesis,
    beam_search,
    greedy_search,
    length_penalty,
    max_output_lengths,
)

ENCODINGS = list(training_presets())  # every preset that trains a different model

# ---------------------------------------------------------------------------------------------
# A "model" whose next-token probabilities are written by hand (fairseq's test pattern, keyed
# by the prefix instead of the step so that beam reordering is exercised for real).

A, B, C = 4, 5, 6  # three words; 0-3 are PAD, UNK, BOS, EOS
VOCAB = 8
UP_TO_12 = {"max_len_a": 0, "max_len_b": 12}  # outputs of up to 12 tokens, whatever the source


class TableCache:
    """The prefixes (without BOS) of every row; `reorder` must make them follow the beams."""

    def __init__(self, memory: Tensor) -> None:
        self.memory = memory
        self.prefixes: list[tuple[int, ...]] | None = None

    @property
    def length(self) -> int:
        return 0 if self.prefixes is None else len(self.prefixes[0]) + 1

    def reorder(self, indices: Tensor) -> None:
        self.memory = self.memory.index_select(0, indices)
        if self.prefixes is not None:
            self.prefixes = [self.prefixes[i] for i in indices.tolist()]


class TableModel:
    """Next-token distribution = `table[prefix]` (prefix without BOS), else `default`.

    The mass a distribution leaves over is spread evenly over the tokens it does not list,
    so every log-probability is finite, as with a real softmax.
    """

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], default: dict[int, float]):
        self.table, self.default = table, default
        self.steps = 0

    def log_prob(self, prefix: tuple[int, ...], token: int) -> float:
        dist = self.table.get(prefix, self.default)
        return math.log(dist.get(token, (1.0 - sum(dist.values())) / (VOCAB - len(dist))))

    def sequence_log_prob(self, tokens: list[int]) -> float:
        """log P(tokens + EOS)."""
        seq = [*tokens, EOS]
        return sum(self.log_prob(tuple(seq[:t]), seq[t]) for t in range(len(seq)))

    def _row(self, prefix: tuple[int, ...]) -> Tensor:
        return torch.tensor([self.log_prob(prefix, t) for t in range(VOCAB)])

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        return src.float().unsqueeze(-1), src.eq(0)

    def start_decoding(self, memory: Tensor, pad_mask: Tensor) -> TableCache:
        return TableCache(memory)

    def decode_step(self, tokens: Tensor, cache: TableCache) -> Tensor:
        self.steps += 1
        if cache.prefixes is None:
            assert bool(tokens.eq(BOS).all())
            cache.prefixes = [() for _ in range(tokens.numel())]
        else:
            cache.prefixes = [(*p, t) for p, t in zip(cache.prefixes, tokens.tolist(), strict=True)]
        return torch.stack([self._row(p) for p in cache.prefixes])

    def decode(self, tgt_in: Tensor, memory: Tensor, pad_mask: Tensor) -> Tensor:
        return torch.stack(
            [
                torch.stack([self._row(tuple(s[1:t])) for t in range(1, len(s) + 1)])
                for s in tgt_in.tolist()
            ]
        )


def src_of(*lengths: int) -> Tensor:
    """Source ids of the given lengths (EOS included), right-padded."""
    out = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, : n - 1] = A
        out[i, n - 1] = EOS
    return out


def long_or_short() -> TableModel:
    """'A' is the likelier sentence, but 'B' * 9 wins once the GNMT penalty rewards length."""
    table: dict[tuple[int, ...], dict[int, float]] = {(): {A: 0.55, B: 0.44}, (A,): {EOS: 0.99}}
    for n in range(1, 9):
        table[(B,) * n] = {B: 0.99}
    table[(B,) * 9] = {EOS: 0.99}
    return TableModel(table, default={C: 0.99})  # anything else rambles on


def test_alpha_decides_between_a_short_likely_and_a_long_output() -> None:
    model = long_or_short()
    short, long = [A], [B] * 9
    lp_short, lp_long = model.sequence_log_prob(short), model.sequence_log_prob(long)
    assert lp_short > lp_long  # raw log-probability prefers the short one...
    assert lp_long / length_penalty(10, 0.6) > lp_short / length_penalty(2, 0.6)  # ...GNMT not

    raw = beam_search(model, src_of(3), DecodeConfig(beam=2, alpha=0.0, **UP_TO_12))[0][0]
    assert raw.tokens == short
    assert raw.log_prob == pytest.approx(lp_short, abs=1e-5)
    assert raw.score == pytest.approx(lp_short, abs=1e-5)  # alpha = 0: score is the log-prob

    gnmt = beam_search(model, src_of(3), DecodeConfig(beam=2, alpha=0.6, **UP_TO_12))[0][0]
    assert gnmt.tokens == long
    assert gnmt.log_prob == pytest.approx(lp_long, abs=1e-5)
    assert gnmt.score == pytest.approx(lp_long / ((5 + 10) / 6) ** 0.6, abs=1e-5)

    # Greedy commits to 'A' at the first step and never sees the long one.
    greedy = greedy_search(model, src_of(3), DecodeConfig(alpha=0.6, **UP_TO_12))[0][0]
    assert greedy.tokens == short


def test_the_bound_stops_a_sentence_as_soon_as_no_live_beam_can_win() -> None:
    # alpha = 0: once 'A EOS' is finished, every live beam is already less likely: stop at step 2.
    model = long_or_short()
    beam_search(model, src_of(3), DecodeConfig(beam=2, alpha=0.0, **UP_TO_12))
    assert model.steps == 2
    # With the penalty the long beam could still win (bounded with lp(max_len)): search on.
    model = long_or_short()
    beam_search(model, src_of(3), DecodeConfig(beam=2, alpha=0.6, **UP_TO_12))
    assert model.steps == 10
    # A max_len too short for the long output makes the bound stop the search early:
    # (log P('B B ...') / lp(4) cannot beat 'A EOS' any more.
    model = long_or_short()
    short_max_len = DecodeConfig(beam=2, alpha=0.6, max_len_a=0, max_len_b=4)
    out = beam_search(model, src_of(3), short_max_len)[0][0]
    assert out.tokens == [A] and model.steps == 2


def test_finished_hypotheses_filling_the_beam_do_not_stop_a_better_live_one() -> None:
    # 'A' and 'A C' finish at steps 2 and 3 and fill a beam of 2, while 'B B B' is live and
    # will end as 'B' * 9, the best under alpha 0.6. fairseq's plain rule (stop once K have
    # finished) would return 'A C'; here the search goes on while a live beam beats them.
    table: dict[tuple[int, ...], dict[int, float]] = {
        (): {A: 0.55, B: 0.44},
        (A,): {EOS: 0.5, C: 0.49},
        (A, C): {EOS: 0.99},
    }
    for n in range(1, 9):
        table[(B,) * n] = {B: 0.99}
    table[(B,) * 9] = {EOS: 0.99}
    model = TableModel(table, default={C: 0.99})
    hyps = beam_search(model, src_of(3), DecodeConfig(beam=2, nbest=2, alpha=0.6, **UP_TO_12))[0]
    assert [h.tokens for h in hyps] == [[B] * 9, [A, C]]


def test_eos_outside_the_beam_does_not_finish_so_beam_one_stays_greedy() -> None:
    # At step 1 EOS is second (0.35): an empty output would score log(0.35) = -1.05, better
    # than the arg-max path 'A B' (log(0.5 * 0.5 * 0.99) / lp(3) = -1.18). Greedy never sees
    # it, and neither may beam 1: EOS finishes a hypothesis only inside the top K.
    model = TableModel(
        {(): {A: 0.5, EOS: 0.35, B: 0.14}, (A,): {B: 0.5, EOS: 0.45}, (A, B): {EOS: 0.99}},
        default={C: 0.99},
    )
    assert greedy_search(model, src_of(3))[0][0].tokens == [A, B]
    assert beam_search(model, src_of(3), DecodeConfig(beam=1))[0][0].tokens == [A, B]
    # A beam of 2 does hold the EOS candidate, and finds the better empty output.
    assert beam_search(model, src_of(3), DecodeConfig(beam=2))[0][0].tokens == []


def test_eos_is_forced_at_max_len_per_sentence() -> None:
    model = TableModel({}, default={B: 0.99})  # never wants to stop
    src = src_of(2, 4, 3)
    max_len = max_output_lengths(src, 1.0, 1)  # a * src_len + b, src_len counts the EOS
    assert max_len.tolist() == [3, 5, 4]
    for search in (greedy_search, beam_search):
        out = search(model, src, DecodeConfig(alpha=0.6, max_len_a=1.0, max_len_b=1))
        for hyps, n in zip(out, max_len.tolist(), strict=True):
            best = hyps[0]
            assert best.tokens == [B] * (n - 1)  # n tokens including the forced EOS
            expected = model.sequence_log_prob(best.tokens)
            assert best.log_prob == pytest.approx(expected, abs=1e-5)
            assert best.score == pytest.approx(expected / length_penalty(n, 0.6), abs=1e-5)


def test_nbest_lists_are_sorted_and_rescore_exactly() -> None:
    model = TableModel(
        {
            (): {A: 0.5, B: 0.3, C: 0.15},
            (A,): {EOS: 0.6, B: 0.3},
            (B,): {EOS: 0.7, A: 0.25},
            (C,): {EOS: 0.9},
            (A, B): {EOS: 0.9},
            (B, A): {EOS: 0.9},
        },
        default={EOS: 0.9},
    )
    hyps = beam_search(model, src_of(3), DecodeConfig(beam=3, alpha=0.6, nbest=3))[0]
    assert len(hyps) == 3
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert len({tuple(h.tokens) for h in hyps}) == 3
    for h in hyps:
        log_prob = model.sequence_log_prob(h.tokens)
        assert h.log_prob == pytest.approx(log_prob, abs=1e-5)
        assert h.score == pytest.approx(log_prob / length_penalty(len(h.tokens) + 1, 0.6), abs=1e-5)
    # P: 'A' 0.30, 'B' 0.21, 'A B' 0.135, 'C' 0.135. 'C EOS' ranks 4th at step 2, outside the
    # beam of 3, so it never finishes; 'A B' (its equal in probability) does, one step later.
    assert [h.tokens for h in hyps] == [[A], [B], [A, B]]


def test_nbest_larger_than_beam_is_refused() -> None:
    with pytest.raises(ValueError, match="nbest"):
        beam_search(long_or_short(), src_of(3), DecodeConfig(beam=2, nbest=3))


def special_lover() -> TableModel:
    """Prefers BOS, then PAD, then UNK, to the words; EOS is never the arg-max."""
    return TableModel(
        {
            (): {BOS: 0.4, PAD: 0.3, UNK: 0.2, A: 0.06, B: 0.03, EOS: 0.005},
            (UNK,): {BOS: 0.5, EOS: 0.45},
            (A,): {PAD: 0.6, EOS: 0.35},
            (B,): {EOS: 0.9},
        },
        default={BOS: 0.9},
    )


def test_pad_and_bos_are_never_output_and_the_score_counts_only_shown_tokens() -> None:
    # Unmasked, greedy would output BOS up to max_len: an empty text with a score of 11 tokens.
    lp2 = length_penalty(2, 0.6)
    for search, settings in [
        (greedy_search, DecodeConfig(**UP_TO_12)),
        (beam_search, DecodeConfig(beam=2, nbest=2, **UP_TO_12)),
    ]:
        hyps = search(special_lover(), src_of(3), settings)[0]
        assert hyps[0].tokens == [UNK]  # UNK is allowed by default (unk_penalty = 0)
        assert hyps[0].log_prob == pytest.approx(math.log(0.2 * 0.45), abs=1e-5)
        assert hyps[0].score == pytest.approx(math.log(0.2 * 0.45) / lp2, abs=1e-5)
    assert [h.tokens for h in hyps] == [[UNK], [A]]
    assert hyps[1].score == pytest.approx(math.log(0.06 * 0.35) / lp2, abs=1e-5)


def test_unk_penalty_is_added_to_unk_at_every_step_and_minus_inf_bans_it() -> None:
    model, lp2 = special_lover(), length_penalty(2, 0.6)
    # UNK (0.2) penalised by 0.5 still beats A (0.06); the penalty is part of the score.
    halved = greedy_search(model, src_of(3), DecodeConfig(unk_penalty=math.log(0.5)))[0][0]
    assert halved.tokens == [UNK]
    assert halved.log_prob == pytest.approx(math.log(0.2 * 0.5 * 0.45), abs=1e-5)
    assert halved.score == pytest.approx(math.log(0.2 * 0.5 * 0.45) / lp2, abs=1e-5)
    quartered = DecodeConfig(unk_penalty=math.log(0.25))  # 0.05 < 0.06
    assert greedy_search(model, src_of(3), quartered)[0][0].tokens == [A]
    # Banned: greedy takes A (then EOS 0.35); a beam of 2 also holds B, whose EOS is likelier.
    banned = DecodeConfig(beam=2, nbest=2, unk_penalty=-math.inf, **UP_TO_12)
    greedy = greedy_search(model, src_of(3), banned)[0][0]
    assert greedy.tokens == [A]
    assert greedy.log_prob == pytest.approx(math.log(0.06 * 0.35), abs=1e-5)
    hyps = beam_search(model, src_of(3), banned)[0]
    assert [h.tokens for h in hyps] == [[B], [A]]
    assert [h.score for h in hyps] == pytest.approx(
        [math.log(0.03 * 0.9) / lp2, math.log(0.06 * 0.35) / lp2], abs=1e-5
    )


@pytest.mark.parametrize(
    "bad", [{"unk_penalty": 0.5}, {"unk_penalty": math.nan}, {"eos_rule": "x"}]
)
def test_bad_unk_penalty_or_eos_rule_is_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match=f"decode.{next(iter(bad))}"):
        decode_settings(None, **bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        beam_search(long_or_short(), src_of(3), DecodeConfig(**bad))
    assert (
        decode_settings(None, unk_penalty=-math.inf, eos_rule="top_2beam").eos_rule == "top_2beam"
    )


def test_a_config_saved_before_unk_penalty_and_eos_rule_still_validates() -> None:
    # A checkpoint stores its config as a plain dict; older ones lack the two keys.
    saved = OmegaConf.to_container(compose(["model=tiny"]), resolve=True)
    for key in ("unk_penalty", "eos_rule"):
        del saved["decode"][key]
    validate(OmegaConf.create(saved))
    assert decode_settings(saved["decode"]) == DecodeConfig()


def eos_third() -> TableModel:
    """At step 1 EOS ranks 3rd: candidate rank K+1 for a beam of 2."""
    return TableModel(
        {
            (): {A: 0.38, B: 0.3, EOS: 0.28},
            (A,): {B: 0.5, EOS: 0.45},
            (B,): {A: 0.5, EOS: 0.45},
            (A, B): {EOS: 0.99},
            (B, A): {EOS: 0.99},
        },
        default={C: 0.99},
    )


def test_the_top_2beam_rule_finishes_an_eos_ranked_beyond_the_beam() -> None:
    def score(p: float, n: int) -> float:
        return math.log(p) / length_penalty(n, 0.6)

    settings = DecodeConfig(beam=2, nbest=2, **UP_TO_12)
    # fairseq's rule (the default): the empty output (EOS at rank 3) never finishes.
    hyps = beam_search(eos_third(), src_of(3), settings)[0]
    assert [h.tokens for h in hyps] == [[A, B], [B, A]]
    assert [h.score for h in hyps] == pytest.approx(
        [score(0.38 * 0.5 * 0.99, 3), score(0.3 * 0.5 * 0.99, 3)], abs=1e-5
    )
    explicit = DecodeConfig(beam=2, nbest=2, eos_rule="top_beam", **UP_TO_12)
    assert beam_search(eos_third(), src_of(3), explicit) == [hyps]
    # tensor2tensor's rule finishes it at step 1, and it wins: log(0.28) / lp(1) = -1.27.
    t2t = DecodeConfig(beam=2, nbest=2, eos_rule="top_2beam", **UP_TO_12)
    hyps = beam_search(eos_third(), src_of(3), t2t)[0]
    assert [h.tokens for h in hyps] == [[], [A, B]]
    assert [h.score for h in hyps] == pytest.approx(
        [score(0.28, 1), score(0.38 * 0.5 * 0.99, 3)], abs=1e-5
    )
    assert hyps[0].log_prob == pytest.approx(math.log(0.28), abs=1e-5)


def test_under_top_2beam_an_early_eos_is_final_only_when_no_live_beam_can_beat_it() -> None:
    # The empty output (EOS at rank 3) and 'A' finish at steps 1 and 2, filling the beam of 2,
    # and 'A' (P 0.2) scores better than every live beam as it stands ('B B' 0.198, 'A C'
    # 0.175), so fairseq's beam budget would stop with 'A' at step 2. But 'B' * 9 ends better
    # under alpha 0.6 at step 10: the bound, with lp(max_len), keeps the search going.
    table: dict[tuple[int, ...], dict[int, float]] = {
        (): {A: 0.5, B: 0.2, EOS: 0.18},
        (A,): {EOS: 0.4, C: 0.35, B: 0.2},
    }
    for n in range(1, 9):
        table[(B,) * n] = {B: 0.99}
    table[(B,) * 9] = {EOS: 0.99}
    for eos_rule in ("top_2beam", "top_beam"):
        model = TableModel(table, default={C: 0.99})
        settings = DecodeConfig(beam=2, eos_rule=eos_rule, **UP_TO_12)
        best = beam_search(model, src_of(3), settings)[0][0]
        assert best.tokens == [B] * 9
        expected = model.sequence_log_prob([B] * 9) / length_penalty(10, 0.6)
        assert best.score == pytest.approx(expected, abs=1e-5)
        assert model.steps >= 10


# ---------------------------------------------------------------------------------------------
# Real models (random weights): every encoding.


def tiny(encoding: str) -> torch.nn.Module:
    cfg = compose(["model=tiny", f"encoding={encoding}", "model.dropout=0.0"])
    return build_model(cfg, vocab_size=40).eval()


def random_sources(n: int, max_len: int = 9, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(n, max_len, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, max_len, (1,), generator=g))
        src[i, :length] = torch.randint(4, 40, (length,), generator=g)
        src[i, length] = EOS
    return src


def rescore(model, src: Tensor, hyp: Hypothesis, alpha: float) -> tuple[float, float]:
    """(sum of log-probs incl. EOS, normalised score) from one full teacher-forced pass."""
    memory, pad_mask = model.encode(src.unsqueeze(0))
    tgt_in = torch.tensor([[BOS, *hyp.tokens]])
    with torch.no_grad():
        lprobs = model.decode(tgt_in, memory, pad_mask).log_softmax(-1)[0]  # (T, V)
    gold = torch.tensor([*hyp.tokens, EOS])
    total = lprobs.gather(1, gold.unsqueeze(1)).sum().item()
    return total, total / length_penalty(len(gold), alpha)


def as_tokens(results: list[list[Hypothesis]]) -> list[list[list[int]]]:
    return [[h.tokens for h in hyps] for hyps in results]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_beam_one_is_greedy(encoding: str) -> None:
    model, src = tiny(encoding), random_sources(6)
    greedy = greedy_search(model, src, DecodeConfig(max_len_b=12))
    beam = beam_search(model, src, DecodeConfig(beam=1, max_len_b=12))
    assert as_tokens(beam) == as_tokens(greedy)
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].score == pytest.approx(g[0].score, abs=1e-5)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_random_models_never_output_pad_or_bos_nor_unk_when_banned(encoding: str) -> None:
    # Random weights put much of their mass on the special ids (BOS, UNK) without masking.
    model, src = tiny(encoding), random_sources(6)
    for unk_penalty, banned in [(0.0, {PAD, BOS}), (-math.inf, {PAD, BOS, UNK})]:
        for settings in [
            DecodeConfig(beam=1, max_len_b=5, unk_penalty=unk_penalty),
            DecodeConfig(beam=3, nbest=3, max_len_b=5, unk_penalty=unk_penalty),
            DecodeConfig(
                beam=3, nbest=3, max_len_b=5, unk_penalty=unk_penalty, eos_rule="top_2beam"
            ),
        ]:
            search = greedy_search if settings.beam == 1 else beam_search
            for hyps in search(model, src, settings):
                assert hyps and all(not banned & set(h.tokens) for h in hyps)
                assert all(math.isfinite(h.score) for h in hyps)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("eos_rule", ["top_beam", "top_2beam"])
def test_scores_equal_a_full_forward_rescoring(encoding: str, eos_rule: str) -> None:
    model, src = tiny(encoding), random_sources(4)
    for alpha in (0.6, 0.0):
        settings = DecodeConfig(beam=4, nbest=4, alpha=alpha, max_len_b=10, eos_rule=eos_rule)
        results = beam_search(model, src, settings)
        for s, hyps in zip(src, results, strict=True):
            assert len(hyps) == 4
            for h in hyps:
                log_prob, score = rescore(model, s, h, alpha)
                assert h.log_prob == pytest.approx(log_prob, abs=1e-4)
                assert h.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("eos_rule", ["top_beam", "top_2beam"])
def test_a_sentence_alone_equals_it_inside_a_batch(encoding: str, eos_rule: str) -> None:
    model, src = tiny(encoding), random_sources(6)
    settings = DecodeConfig(beam=3, nbest=2, max_len_b=10, eos_rule=eos_rule)
    batched = beam_search(model, src, settings)
    for i in range(len(src)):
        length = int(src[i].ne(0).sum())
        alone = beam_search(model, src[i : i + 1, :length], settings)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


@pytest.mark.parametrize("encoding", ["relative", "learned", "rotary"])
def test_cached_and_recomputed_prefixes_give_the_same_search(encoding: str) -> None:
    model, src = tiny(encoding), random_sources(4)
    cached = beam_search(model, src, DecodeConfig(beam=4, nbest=4, max_len_b=8))
    full = beam_search(model, src, DecodeConfig(beam=4, nbest=4, max_len_b=8), use_cache=False)
    assert as_tokens(cached) == as_tokens(full)
    assert as_tokens(greedy_search(model, src, DecodeConfig(max_len_b=8))) == as_tokens(
        greedy_search(model, src, DecodeConfig(max_len_b=8), use_cache=False)
    )


def test_learned_positions_cap_the_output_length() -> None:
    cfg = compose(
        [
            "model=tiny",
            "encoding=learned",
            "encoding.max_len=6",
            "data.max_len=4",
            "model.dropout=0.0",
        ]
    )
    model = build_model(cfg, vocab_size=40).eval()
    out = beam_search(model, random_sources(3, max_len=5), DecodeConfig(beam=2, max_len_b=50))
    assert all(len(h[0].tokens) + 1 <= 6 for h in out)


# ---------------------------------------------------------------------------------------------
# A trained toy model: reversing short id sequences.

TOY_VOCAB = 16


def reversal_batch(n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    length = int(torch.randint(3, 9, (1,), generator=g))
    x = torch.randint(4, TOY_VOCAB, (n, length), generator=g)
    src = torch.cat([x, torch.full((n, 1), EOS)], 1)
    tgt = x.flip(1)
    tgt_in = torch.cat([torch.full((n, 1), BOS), tgt], 1)
    tgt_out = torch.cat([tgt, torch.full((n, 1), EOS)], 1)
    return src, tgt_in, tgt_out


@pytest.fixture(scope="module")
def reverser():
    """A tiny relative-position model trained for a few hundred Adam steps to reverse ids."""
    torch.manual_seed(0)
    cfg = compose(
        [
            "model=tiny",
            "encoding=relative",
            "model.dropout=0.0",
            "model.d_model=32",
            "model.d_ff=64",
            "model.heads=2",
        ]
    )
    model = build_model(cfg, vocab_size=TOY_VOCAB)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        src, tgt_in, tgt_out = reversal_batch(32, g)
        logits = model(src, tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, TOY_VOCAB), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_a_larger_beam_never_scores_worse_on_a_trained_model(reverser) -> None:
    g = torch.Generator().manual_seed(1)
    improved = 0
    for length in range(3, 9):
        src = torch.randint(4, TOY_VOCAB, (20, length + 1), generator=g)
        src[:, -1] = EOS
        best = {
            k: [h[0].score for h in beam_search(reverser, src, DecodeConfig(beam=k))]
            for k in (1, 2, 4, 8)
        }
        for small, large in [(1, 2), (2, 4), (4, 8)]:
            for lo, hi in zip(best[small], best[large], strict=True):
                assert hi >= lo - 1e-5, f"beam {large} scored {hi:.4f} < beam {small}: {lo:.4f}"
        improved += sum(b > a + 1e-5 for a, b in zip(best[1], best[8], strict=True))
    assert improved > 0, "the beam never beat greedy: the toy model is too sure to test anything"


@pytest.mark.slow
def test_the_trained_model_reverses_with_beam_and_greedy(reverser) -> None:
    g = torch.Generator().manual_seed(2)
    src, _, tgt_out = reversal_batch(16, g)
    for search in (greedy_search, beam_search):
        out = search(reverser, src)
        correct = sum(h[0].tokens == t[:-1].tolist() for h, t in zip(out, tgt_out, strict=True))
        assert correct >= 12
