"""Greedy and batched beam search over the model's incremental cache (GNMT length penalty).

Scores. A hypothesis Y (its tokens, then EOS) has `log_prob` = the sum of the model's
log-probabilities of its tokens including EOS, and `score = log_prob / lp(|Y|)` with the
GNMT penalty `lp(n) = ((5 + n) / 6) ** alpha` (Wu et al. 2016), n counting EOS. alpha = 0
gives lp = 1: the raw log-probability. This is "beam 4, alpha 0.6" of tensor2tensor and
of the paper, not fairseq's `--lenpen` (`n ** alpha`).

Special tokens. PAD and BOS are never output: their log-probability is -inf at every step,
so a hypothesis holds only tokens its text shows and its score counts only those. UNK gets
`unk_penalty` added to its log-probability at every step (0: none, -inf: never output; the
penalty is part of `log_prob` and `score`, as in fairseq). It must be <= 0: the stopping
bound below needs every step's log-probability to be <= 0.

When the penalty applies. At each step every candidate (live beam x next token) has the
same length, so dividing them all by one lp(n) would not change their order: live beams
are ranked by raw cumulative log-probability, and a hypothesis is normalised once, when
it finishes (its EOS is chosen, or forced at max_len). Normalising at every step as
tensor2tensor does would select exactly the same beams; what differs between toolkits
is which finished hypotheses are kept and when a sentence stops, fixed here as follows.

One step, for every active sentence at once (rows = sentences x beams):

1. candidates: `scores (N, K, 1) + log_softmax(logits) (N, K, V)`, flattened to
   `(N, K*V)`, top 2K of them (at most K end in EOS, one per beam, so at least K do not);
2. an EOS candidate finishes a hypothesis if it ranks among the top K (`eos_rule=top_beam`,
   the default, fairseq's rule: EOS is accepted only where it would have taken a beam slot,
   which makes beam 1 exactly greedy) or among all 2K (`top_2beam`, tensor2tensor's rule,
   which also finishes the EOS candidates ranked K+1 to 2K); at max_len every non-EOS token
   is masked so all live beams finish;
3. the K best non-EOS candidates become the live beams (the beam is refilled to K), and
   the cache rows are reordered to follow them.

A sentence is done at max_len, or when one of two rules says its search is over:

* T2T's bound (exact): it has `nbest` finished hypotheses and no live beam can still beat
  the nbest-th of them. A live beam of log-probability L can at best reach
  `L / lp(max_len)`, since L <= 0 only falls (every step adds a log-probability <= 0, the
  UNK penalty included) and lp only grows with length. Nothing in this depends on which
  EOS candidates finish, so it holds under both EOS rules. Under `top_2beam` it is the
  only rule (tensor2tensor's `stop_early`): a hypothesis finished from rank K+1 to 2K,
  possibly early and short, is final only once no live beam can beat it.
* fairseq's beam budget, made length-aware, with `top_beam` only: K hypotheses have
  finished and no live beam, scored as it stands (`L / lp(its length)`), beats the nbest-th
  of them. With beam 1 this is greedy's stop at the first arg-max EOS, so beam 1 is exactly
  greedy; with alpha = 0 it is implied by the bound. (Under `top_2beam` beam 1 is not
  greedy: an EOS ranked second finishes too. `nmt.decoding` decodes beam 1 greedily.)

Done sentences leave the batch (`cache.reorder`), so what a sentence gets never depends on
what it was batched with. Returned n-best lists are the finished hypotheses sorted by
`score`, best first.

`max_len = max_len_a * src_len + max_len_b` counts output tokens including EOS;
`src_len` is the number of non-pad source positions (its EOS included). With learned
absolute positions it is also capped by the table size (`encoding.max_len`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.special_ids import BOS, EOS, PAD, UNK

EOS_RULES = ("top_beam", "top_2beam")  # DecodeConfig.eos_rule: see the module docstring


@dataclass(frozen=True)
class Hypothesis:
    """One output: tokens without BOS/EOS, summed log-probability (incl. EOS), normalised score."""

    tokens: list[int]
    log_prob: float
    score: float


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT `((5 + |Y|) / 6) ** alpha`, |Y| counting EOS; 1 when alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha


def target_position_limit(model: Any) -> int | None:
    """How many target positions the model can embed (learned tables), None if unbounded."""
    positions = getattr(model, "tgt_positions", None)
    return getattr(positions, "max_len", None)


def source_position_limit(model: Any) -> int | None:
    """How many source positions the model can embed (learned tables), None if unbounded."""
    positions = getattr(model, "src_positions", None)
    return getattr(positions, "max_len", None)


def max_output_lengths(
    src: Tensor, max_len_a: float, max_len_b: int, limit: int | None = None, pad_id: int = PAD
) -> Tensor:
    """Per sentence `floor(a * src_len + b)` output tokens (EOS included), in [1, `limit`]."""
    src_len = src.ne(pad_id).sum(dim=1).cpu().double()  # (B,); on the CPU: MPS has no float64
    max_len = (max_len_a * src_len + max_len_b).floor().long().clamp(min=1)
    if limit is not None:
        # Output token n is predicted from the decoder input at position n - 1.
        max_len = max_len.clamp(max=limit)
    return max_len.to(src.device)


def _check_settings(settings: DecodeConfig) -> None:
    """Refuse what the search cannot honour (`nmt.config.decode_settings` checks the same)."""
    if not settings.unk_penalty <= 0:  # NaN fails too
        raise ValueError(f"need unk_penalty <= 0, got {settings.unk_penalty}")
    if settings.eos_rule not in EOS_RULES:
        raise ValueError(f"eos_rule must be one of {EOS_RULES}, got {settings.eos_rule!r}")


def _mask_special(lprobs: Tensor, unk_penalty: float) -> Tensor:
    """PAD and BOS never come next; UNK gets `unk_penalty` (in place on `(..., V)`)."""
    lprobs[..., PAD] = -math.inf
    lprobs[..., BOS] = -math.inf
    if unk_penalty != 0:
        lprobs[..., UNK] += unk_penalty
    return lprobs


class _Stepper:
    """Next-token log-probabilities for a growing prefix, with the model's cache."""

    def __init__(self, model: Any, memory: Tensor, pad_mask: Tensor) -> None:
        self.model = model
        self.cache = model.start_decoding(memory, pad_mask)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed `tokens (R,)` at the next position; log-probs `(R, V)` in float32."""
        return self.model.decode_step(tokens, self.cache).float().log_softmax(dim=-1)

    def reorder(self, rows: Tensor) -> None:
        self.cache.reorder(rows)


class _FullPrefixStepper(_Stepper):
    """The same, recomputing the whole prefix with `model.decode` each step (benchmark baseline)."""

    def __init__(self, model: Any, memory: Tensor, pad_mask: Tensor) -> None:
        self.model, self.memory, self.pad_mask = model, memory, pad_mask
        self.prefix: Tensor | None = None  # (R, t) decoder inputs so far

    def step(self, tokens: Tensor) -> Tensor:
        col = tokens.unsqueeze(1)
        self.prefix = col if self.prefix is None else torch.cat((self.prefix, col), dim=1)
        logits = self.model.decode(self.prefix, self.memory, self.pad_mask)[:, -1]
        return logits.float().log_softmax(dim=-1)

    def reorder(self, rows: Tensor) -> None:
        self.memory = self.memory.index_select(0, rows)
        self.pad_mask = self.pad_mask.index_select(0, rows)
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, rows)


def _start(model: Any, src: Tensor, use_cache: bool) -> _Stepper:
    memory, pad_mask = model.encode(src)
    return (_Stepper if use_cache else _FullPrefixStepper)(model, memory, pad_mask)


@torch.no_grad()  # not inference_mode: the encodings cache index tensors across calls
def greedy_search(
    model: Any, src: Tensor, settings: DecodeConfig | None = None, *, use_cache: bool = True
) -> list[list[Hypothesis]]:
    """Arg-max decoding of `src (B, S)`; one-hypothesis lists, scored like `beam_search`.

    Of `settings` (default: DecodeConfig()) it reads the length limit, `unk_penalty`, and
    `alpha` only to score the hypothesis; beam, nbest and eos_rule do not apply.
    """
    settings = DecodeConfig() if settings is None else settings
    _check_settings(settings)
    alpha, max_len_a, max_len_b = settings.alpha, settings.max_len_a, settings.max_len_b
    B, device = src.size(0), src.device
    max_len = max_output_lengths(src, max_len_a, max_len_b, target_position_limit(model))
    stepper = _start(model, src, use_cache)
    results: list[list[Hypothesis]] = [[] for _ in range(B)]
    active = torch.arange(B, device=device)  # sentence ids of the rows
    tokens = torch.full((B, 0), BOS, dtype=torch.long, device=device)  # (R, t) outputs
    log_prob = torch.zeros(B, device=device)
    last = torch.full((B,), BOS, dtype=torch.long, device=device)
    step = 0
    while active.numel() > 0:
        step += 1  # the output length if this step's token is EOS
        lprobs = _mask_special(stepper.step(last), settings.unk_penalty)  # (R, V)
        forced = max_len[active] <= step  # EOS forced at max_len
        lprobs[forced, :EOS] = -math.inf
        lprobs[forced, EOS + 1 :] = -math.inf
        best_lp, best = lprobs.max(dim=-1)  # (R,)
        log_prob += best_lp
        tokens = torch.cat((tokens, best.unsqueeze(1)), dim=1)
        done = best.eq(EOS)
        if bool(done.any()):
            rows = done.nonzero().squeeze(1)
            lp = length_penalty(step, alpha)
            for sent, toks, lprob in zip(
                active[rows].tolist(),
                tokens[rows, :-1].tolist(),
                log_prob[rows].tolist(),
                strict=True,
            ):
                results[sent].append(Hypothesis(toks, lprob, lprob / lp))
            keep = (~done).nonzero().squeeze(1)
            active, tokens, log_prob, best = active[keep], tokens[keep], log_prob[keep], best[keep]
            if active.numel() > 0:
                stepper.reorder(keep)
        last = best
    return results


@torch.no_grad()  # not inference_mode: the encodings cache index tensors across calls
def beam_search(
    model: Any, src: Tensor, settings: DecodeConfig | None = None, *, use_cache: bool = True
) -> list[list[Hypothesis]]:
    """Batched beam search over `src (B, S)`; per sentence its `nbest` hypotheses, best first.

    `settings` (default: DecodeConfig()) gives beam, alpha, nbest, the length limit,
    unk_penalty and eos_rule.
    """
    settings = DecodeConfig() if settings is None else settings
    _check_settings(settings)
    top_beam = settings.eos_rule == "top_beam"
    beam, alpha, nbest = settings.beam, settings.alpha, settings.nbest
    max_len_a, max_len_b = settings.max_len_a, settings.max_len_b
    if beam < 1 or not 1 <= nbest <= beam:
        raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, got beam={beam} nbest={nbest}")
    B, device, K = src.size(0), src.device, beam
    max_len = max_output_lengths(src, max_len_a, max_len_b, target_position_limit(model))
    lp_max = length_penalty(max_len.float(), alpha)  # (B,) for the stopping bound
    stepper = _start(model, src, use_cache)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]

    # Live state. Rows of the cache are (active sentence, beam); before the first step
    # every sentence has one beam (BOS), afterwards K.
    active = torch.arange(B, device=device)  # (N,) sentence ids
    scores = torch.zeros(B, 1, device=device)  # (N, k) raw cumulative log-probs
    tokens = torch.zeros(B, 1, 0, dtype=torch.long, device=device)  # (N, k, t) outputs
    last = torch.full((B,), BOS, dtype=torch.long, device=device)  # (N*k,)
    step = 0
    while active.numel() > 0:
        step += 1  # output length (EOS included) of a hypothesis finishing now
        N, k = scores.shape
        lprobs = stepper.step(last).view(N, k, -1)  # (N, k, V)
        _mask_special(lprobs, settings.unk_penalty)
        V = lprobs.size(-1)
        forced = max_len[active] <= step  # (N,) EOS forced at max_len
        lprobs[forced, :, :EOS] = -math.inf
        lprobs[forced, :, EOS + 1 :] = -math.inf
        cand = (scores.unsqueeze(2) + lprobs).view(N, k * V)  # (N, k*V)
        n_cand = min(2 * K, k * V)
        values, flat = cand.topk(n_cand, dim=1)  # (N, 2K), best first
        origin, token = flat // V, flat % V  # beam of origin, next token
        is_eos = token.eq(EOS)

        # 2. EOS within the top K (top_beam) or 2K (top_2beam) finishes a hypothesis, and
        # must be a real, finite one.
        accept = is_eos & torch.isfinite(values)
        if top_beam:
            accept[:, K:] = False
        # 3. The K best non-EOS candidates live on; -inf marks a dead slot (tiny vocab, forced).
        live_values = values.masked_fill(is_eos, -math.inf)
        if n_cand < K:
            pad = torch.full((N, K - n_cand), -math.inf, device=device)
            live_values = torch.cat((live_values, pad), dim=1)
            flat = torch.cat((flat, flat[:, :1].expand(N, K - n_cand)), dim=1)
            origin, token = flat // V, flat % V
        new_scores, pick = live_values.topk(K, dim=1)  # (N, K)
        new_origin, new_token = origin.gather(1, pick), token.gather(1, pick)

        # Book-keeping on the host: a few small transfers per step, none per beam.
        active_list = active.tolist()
        n_done_before = [len(finished[s]) for s in active_list]
        if bool(accept.any()):
            where = accept.nonzero()  # (F, 2): (row, candidate position)
            rows, pos = where[:, 0], where[:, 1]
            done_tokens = tokens[rows, origin[rows, pos]].tolist()
            lp = length_penalty(step, alpha)
            for r, toks, lprob in zip(
                rows.tolist(), done_tokens, values[rows, pos].tolist(), strict=True
            ):
                finished[active_list[r]].append(Hypothesis(toks, lprob, lprob / lp))

        # Which sentences are done: max_len, the bound, or the beam budget (module docstring).
        best_live = new_scores[:, 0]  # (N,) raw log-prob of the best live beam
        bound = best_live / lp_max[active]  # the best it could still reach
        now = best_live / length_penalty(step, alpha)  # its score as it stands
        host = torch.stack((bound, now, forced.float())).tolist()
        keep: list[int] = []
        for r, (live_bound, live_now, was_forced) in enumerate(zip(*host, strict=True)):
            hyps = finished[active_list[r]]
            if len(hyps) > n_done_before[r]:
                hyps.sort(key=lambda h: -h.score)
            if was_forced or live_bound == -math.inf:
                continue
            if len(hyps) >= nbest and live_bound <= hyps[nbest - 1].score:
                continue
            if top_beam and len(hyps) >= K and live_now <= hyps[nbest - 1].score:
                continue
            keep.append(r)
        if not keep:
            break

        keep_t = torch.tensor(keep, dtype=torch.long, device=device)
        # New row r*K + j continues old row r*k + origin (cache rows are sentence-major).
        src_rows = (keep_t.unsqueeze(1) * k + new_origin[keep_t]).view(-1)  # (N'*K,)
        stepper.reorder(src_rows)
        tokens = torch.cat(
            (
                tokens[keep_t.unsqueeze(1), new_origin[keep_t]],  # (N', K, t)
                new_token[keep_t].unsqueeze(2),
            ),
            dim=2,
        )
        scores, active = new_scores[keep_t], active[keep_t]
        last = new_token[keep_t].view(-1)
    return [hyps[:nbest] for hyps in finished]
