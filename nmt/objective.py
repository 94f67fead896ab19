"""What training minimises and how fast: the label-smoothed loss and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from nmt.data import PAD, EncodedSplit
from nmt.data.batching import collate, split_batches

# Devices where torch has a fused Adam kernel; elsewhere Adam takes torch's default.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


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
        # One kernel over all parameters instead of a loop of small element-wise ops.
        fused=device.type in FUSED_ADAM_DEVICES or None,
    )
    # LambdaLR counts from 0; the schedule's first step is 1.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: inverse_sqrt_lr(s + 1, d_model, t.warmup_steps, t.lr_scale)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return optimizer, scheduler, scaler


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(saved)`, keeping this optimizer's kernel choice.

    `load_state_dict` takes every param-group setting from the saved state, "fused" and
    "foreach" included: a checkpoint written before Adam was fused would resume unfused
    (and raise under a gradient scaler, which only the fused kernel takes), and fused
    kernels need their step counts on the parameters' device, which loading arranges only
    when the saved group says fused.
    """
    kernel = {
        key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults
    }
    groups = [{**group, **kernel} for group in saved["param_groups"]]
    optimizer.load_state_dict({**saved, "param_groups": groups})


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


class _ProjectedSmoothedLoss(torch.autograd.Function):
    """Label-smoothed loss of `states @ weight^T`, a chunk of rows at a time, with its
    gradients computed on the way: the `(N, V)` logits, log-probabilities and their
    gradient never exist whole (at Multi30k's 4,096 tokens and V = 8,000 each is 128 MB in
    float32, and filling, reading and freeing them took most of a bf16 step).

    Per row with target y:  d loss / d z_v = p_v - (1 - eps) [v = y] - eps / V,
    zero for padding rows; then d/d states = G @ W and d/d W = G^T @ states.
    """

    @staticmethod
    def forward(ctx, states, weight, target, eps, chunk_rows, dtype):  # type: ignore[override]
        keep = target.ne(PAD)
        w = weight.to(dtype)
        grad_states = torch.empty_like(states)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss = torch.zeros((), dtype=torch.float32, device=states.device)
        nll = torch.zeros((), dtype=torch.float32, device=states.device)
        vocab = weight.size(0)
        for start in range(0, states.size(0), chunk_rows):
            h = states[start : start + chunk_rows].to(dtype)  # (n, D)
            y, m = target[start : start + chunk_rows], keep[start : start + chunk_rows]
            log_probs = F.log_softmax((h @ w.t()).float(), dim=-1)  # (n, V)
            row_nll = -log_probs.gather(1, y.unsqueeze(1)).squeeze(1)
            row_smooth = -log_probs.mean(dim=-1)
            loss += (((1.0 - eps) * row_nll + eps * row_smooth) * m).sum()
            nll += (row_nll * m).sum()
            grad = log_probs.exp_()  # softmax, in place of the log-probabilities
            grad.scatter_add_(1, y.unsqueeze(1), grad.new_full((y.numel(), 1), eps - 1.0))
            grad.sub_(eps / vocab).mul_(m.unsqueeze(1))
            g = grad.to(dtype)
            grad_states[start : start + chunk_rows] = (g @ w).to(states.dtype)
            grad_weight += (g.t() @ h).float()
        ctx.save_for_backward(grad_states, grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):  # type: ignore[override]
        grad_states, grad_weight = ctx.saved_tensors
        return grad_states * grad_loss, grad_weight * grad_loss, None, None, None, None


def projected_label_smoothed_loss(
    states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, eps: float, chunk_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`label_smoothed_loss(states @ weight^T, target, eps)` without materialising the logits:
    states `(B, T, D)` (the decoder's output), weight `(V, D)` (the output projection).
    Under autocast the projection runs in the autocast dtype, as `states @ weight.t()`
    would; `chunk_rows` bounds the rows whose logits exist at once."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows} must be >= 1")
    device = states.device.type
    dtype = (
        torch.get_autocast_dtype(device)
        if torch.is_autocast_enabled(device)
        else torch.promote_types(states.dtype, weight.dtype)
    )
    with torch.autocast(device, enabled=False):  # the function casts for itself
        return _ProjectedSmoothedLoss.apply(
            states.reshape(-1, states.size(-1)), weight, target.reshape(-1), eps, chunk_rows, dtype
        )


def batch_loss(
    model: torch.nn.Module,
    output_weight: torch.Tensor,
    batch: Any,
    label_smoothing: float,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (label-smoothed loss, NLL) of a batch, called inside the autocast context.
    `model` may wrap the Transformer (DDP, torch.compile); `output_weight` is its output
    projection. `chunk_tokens` > 0 projects that many target positions at a time inside the
    loss; 0 materialises the `(B, T, V)` logits (the reference computation)."""
    if chunk_tokens == 0:
        logits = model(batch.src, batch.tgt_in)
        return label_smoothed_loss(logits, batch.tgt_out, label_smoothing)
    states = model(batch.src, batch.tgt_in, project=False)
    return projected_label_smoothed_loss(
        states, output_weight, batch.tgt_out, label_smoothing, chunk_tokens
    )


@torch.no_grad()
def split_loss(
    model: torch.nn.Module,
    split: EncodedSplit,
    *,
    max_tokens: int,
    label_smoothing: float,
    chunk_tokens: int,
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
            loss, nll = batch_loss(model, model.output_weight, batch, label_smoothing, chunk_tokens)
        loss_sum, nll_sum = loss_sum + loss.item(), nll_sum + nll.item()
        tokens += batch.tgt_tokens
    nll_mean = nll_sum / tokens
    return {"loss": loss_sum / tokens, "nll": nll_mean, "ppl": math.exp(min(nll_mean, 50))}
