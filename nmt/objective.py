"""What training minimises and how fast: the label-smoothed loss and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from nmt.data import PAD, EncodedSplit
from nmt.data.batching import collate, split_batches


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, scale: float) -> float:
    """Vaswani et al. 2017 eq. (3): scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def build_optimization(
    model: torch.nn.Module, cfg: Any, device: torch.device, precision: str
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """Adam with the inverse square root schedule of `cfg.train`, and the loss scaler fp16
    needs (a no-op in other precisions)."""
    t, d_model = cfg.train, cfg.model.d_model
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=1.0,
        betas=tuple(t.adam_betas),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
    )
    # LambdaLR counts from 0; the schedule's first step is 1.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: inverse_sqrt_lr(s + 1, d_model, t.warmup_steps, t.lr_scale)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return optimizer, scheduler, scaler


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (label-smoothed loss, NLL) over non-padding targets; logits (B, T, V)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1)
    keep = target.ne(PAD)
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    smooth = -log_probs.mean(dim=-1)  # eps spread uniformly over the vocabulary
    loss = (1.0 - eps) * nll + eps * smooth
    # A multiply, not loss[keep]: boolean indexing has a data-dependent shape, a device sync.
    return (loss * keep).sum(), (nll * keep).sum()


@torch.no_grad()
def split_loss(
    model: torch.nn.Module,
    split: EncodedSplit,
    *,
    max_tokens: int,
    label_smoothing: float,
    runtime: Any,
) -> dict[str, float]:
    """Loss, NLL and perplexity per target token over a whole split (teacher forcing); the
    model is left in eval mode. `runtime` gives the device and the autocast context."""
    model.eval()
    loss_sum = nll_sum = 0.0
    tokens = 0
    for indices in split_batches(split, max_tokens, seed=0, epoch=0, shuffle=False):
        batch = collate(split, indices).to(runtime.device)
        with runtime.autocast():
            logits = model(batch.src, batch.tgt_in)
        loss, nll = label_smoothed_loss(logits, batch.tgt_out, label_smoothing)
        loss_sum, nll_sum = loss_sum + loss.item(), nll_sum + nll.item()
        tokens += batch.tgt_tokens
    nll_mean = nll_sum / tokens
    return {"loss": loss_sum / tokens, "nll": nll_mean, "ppl": math.exp(min(nll_mean, 50))}
