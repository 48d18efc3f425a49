"""Agreement metrics (paper eqs. 18-19): one implementation, used by training, evaluation and reports.

Every function works on torch tensors along the last axis and returns one value per leading index, so a batch of
sequences gives per-sequence figures. Frames where ``valid`` is False (unlabelled) are left out. Moments are population
moments (ddof = 0). The numpy helpers at the bottom wrap the same code for evaluation on arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from affect_core.errors import AffectError

_EPS = 1e-12


def _masked_moments(pred: Tensor, gold: Tensor, valid: Tensor | None) -> tuple[Tensor, ...]:
    if valid is None:
        valid = torch.ones_like(pred, dtype=torch.bool)
    w = valid.to(pred.dtype)
    count = w.sum(-1).clamp_min(1.0)
    pred = torch.where(valid, pred, torch.zeros_like(pred))
    gold = torch.where(valid, gold, torch.zeros_like(gold))
    mean_p = (pred * w).sum(-1) / count
    mean_g = (gold * w).sum(-1) / count
    dp = (pred - mean_p.unsqueeze(-1)) * w
    dg = (gold - mean_g.unsqueeze(-1)) * w
    var_p = (dp * dp).sum(-1) / count
    var_g = (dg * dg).sum(-1) / count
    cov = (dp * dg).sum(-1) / count
    return mean_p, mean_g, var_p, var_g, cov


def ccc(pred: Tensor, gold: Tensor, valid: Tensor | None = None) -> Tensor:
    """Concordance correlation coefficient (18): 2 cov / (var_p + var_g + (mean_p - mean_g)^2).

    pred, gold: shape (..., T); valid: (..., T) bool or None. Returns shape (...).
    """
    mean_p, mean_g, var_p, var_g, cov = _masked_moments(pred, gold, valid)
    return 2.0 * cov / (var_p + var_g + (mean_p - mean_g) ** 2 + _EPS)


def pcc(pred: Tensor, gold: Tensor, valid: Tensor | None = None) -> Tensor:
    """Pearson correlation coefficient. Shapes as in :func:`ccc`."""
    _, _, var_p, var_g, cov = _masked_moments(pred, gold, valid)
    return cov / torch.sqrt(var_p * var_g + _EPS)


def rmse(pred: Tensor, gold: Tensor, valid: Tensor | None = None) -> Tensor:
    """Root mean squared error (19). Shapes as in :func:`ccc`."""
    if valid is None:
        valid = torch.ones_like(pred, dtype=torch.bool)
    diff = torch.where(valid, pred - gold, torch.zeros_like(pred))
    count = valid.to(pred.dtype).sum(-1).clamp_min(1.0)
    return torch.sqrt((diff * diff).sum(-1) / count + _EPS)


def metrics_table(pred: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    """CCC, RMSE and Pearson CC of many sequences at once: pred and gold of shapes broadcasting to (..., T), NaN
    gold frames (unlabelled) left out; each metric comes back with shape (...). The moments are computed once for CCC
    and PCC.

    A prediction that is not finite on a labelled frame is an AffectError naming the frame: left out, it would give
    a sequence of such frames a CCC of 0, a number that looks measured (and steers early stopping)."""
    p = torch.as_tensor(np.asarray(pred, dtype=np.float64))
    g = torch.as_tensor(np.asarray(gold, dtype=np.float64))
    p, g = torch.broadcast_tensors(p, g)
    valid = torch.isfinite(g)
    unusable = valid & ~torch.isfinite(p)
    if bool(unusable.any()):
        where = tuple(int(i) for i in torch.nonzero(unusable)[0])
        raise AffectError(
            f"metrics: the prediction is {float(p[where])} at frame {where[-1]}"
            + (f" of sequence {where[:-1]}" if len(where) > 1 else "")
            + ", a labelled frame; expected a finite prediction on every labelled frame"
        )
    g = torch.nan_to_num(g)
    p = torch.nan_to_num(p)
    mean_p, mean_g, var_p, var_g, cov = _masked_moments(p, g, valid)
    return {
        "ccc": (2.0 * cov / (var_p + var_g + (mean_p - mean_g) ** 2 + _EPS)).numpy(),
        "rmse": rmse(p, g, valid).numpy(),
        "pcc": (cov / torch.sqrt(var_p * var_g + _EPS)).numpy(),
    }


def sequence_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """CCC, RMSE and Pearson CC of one sequence; NaN gold frames are unlabelled and left out."""
    return {name: float(value) for name, value in metrics_table(pred, gold).items()}


def average_over_sequences(per_sequence: list[dict[str, float]]) -> dict[str, float]:
    """AVEC protocol: metrics computed per sequence, then averaged over the sequences of a split."""
    if not per_sequence:
        return {"ccc": float("nan"), "rmse": float("nan"), "pcc": float("nan")}
    keys = per_sequence[0].keys()
    return {k: float(np.mean([m[k] for m in per_sequence])) for k in keys}
