"""Training loss (17): -CCC(y, label) + l1 * RMSE(dy, dlabel) + l2 * RMSE(d2y, d2label).

The aligned state y carries level, first and second derivative (per second) of each affect dimension; the label
derivatives are central finite differences per second. Unlabelled frames (NaN labels) are left out of every term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from affect_core.metrics import ccc, rmse


def label_derivatives(labels: Tensor, fps: float) -> tuple[Tensor, Tensor, Tensor]:
    """First and second central differences per second along the last axis, and the frames where both are defined.

    labels: shape (..., T) with NaN where unlabelled. Returns (d, d2, valid), each (..., T); the end frames use
    one-sided differences.
    """
    dt = 1.0 / fps
    d = torch.gradient(labels, spacing=dt, dim=-1)[0]
    d2 = torch.gradient(d, spacing=dt, dim=-1)[0]
    valid = torch.isfinite(d2) & torch.isfinite(labels)
    return torch.nan_to_num(d), torch.nan_to_num(d2), valid


def affect_loss(
    y: Tensor,
    labels: Tensor,
    *,
    fps: float,
    lambda1: float = 0.25,
    lambda2: float = 0.25,
) -> Tensor:
    """Loss (17) averaged over sequences and affect dimensions.

    y: shape (B, T, 3k), states [level, d level, d2 level] per affect dimension, k dimensions.
    labels: shape (B, T, k), NaN where unlabelled.
    """
    sums, counts = affect_loss_parts(y, labels, fps=fps, lambda1=lambda1, lambda2=lambda2)
    return (sums / counts.clamp_min(1)).mean()


def affect_loss_parts(
    y: Tensor,
    labels: Tensor,
    *,
    fps: float,
    lambda1: float = 0.25,
    lambda2: float = 0.25,
) -> tuple[Tensor, Tensor]:
    """Loss (17) summed over the sequences with labels, per affect dimension, and the number of those sequences:
    (sums (k,), counts (k,)). The loss is ``(sums / counts).mean()``; data-parallel workers add their parts first.

    Shapes as in :func:`affect_loss`.
    """
    k = labels.shape[-1]
    assert y.shape[-1] == 3 * k, f"y has {y.shape[-1]} channels, expected 3 x {k}"
    sums, counts = [], []
    for j in range(k):
        gold = labels[..., j]
        valid = torch.isfinite(gold)
        gold0 = torch.nan_to_num(gold)
        d, d2, dvalid = label_derivatives(gold, fps)
        level, dlevel, d2level = y[..., 3 * j], y[..., 3 * j + 1], y[..., 3 * j + 2]
        term = -ccc(level, gold0, valid)
        term = term + lambda1 * rmse(dlevel, d, dvalid) + lambda2 * rmse(d2level, d2, dvalid)
        has_labels = valid.any(-1)
        sums.append((term * has_labels).sum())
        counts.append(has_labels.sum().to(term.dtype))
    return torch.stack(sums), torch.stack(counts)
