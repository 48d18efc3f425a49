"""Per-rater alignment: one learnable Gaussian reaction lag (mu_r, sigma^2_r) for each annotator.

A gold standard such as RECOLA's or AVEC2016's is the mean of several raters' traces, each with its own reaction lag.
Trained with ``--targets raters``, the model keeps the paper's adaptive alignment (14) but one per rater: rater r's
trace is compared with y^r_t = sum_k w^r_k z_{t-k}, w^r the Gaussian window of (mu_r, sigma^2_r). The prediction of
the gold standard (scoring, evaluation, streaming) is the mean of the raters' aligned predictions, which is one
convolution with the mean of their windows (the alignment is linear).

Channels: ``forward`` maps (B, T, C) to (B, T, C) like every alignment; with ``per_rater=True`` it maps (B, T, C) to
(B, T, R * C), rater r's copy in channels [r * C, (r + 1) * C), the order the training labels are stacked in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affect_core.alignment import gaussian_weights, initial_raw_alignment, lagged_convolution
from affect_core.errors import AffectError


class RaterAlignments(nn.Module):
    """R adaptive Gaussian alignments (one per rater): mu_r = D tanh(mu'_r), sigma^2_r = softplus(s_r).

    raters: the raters' names, in the order of the training labels; window: the half-width D in frames; mu_init and
    sigma2_init: every rater's initial lag (frames) and spread (frames^2), as the one-rater alignment's.
    """

    def __init__(
        self, raters: tuple[str, ...], *, window: int = 100, mu_init: float = 0.0, sigma2_init: float = 25.0
    ) -> None:
        super().__init__()
        if not raters:
            raise AffectError("rater alignment: no raters; expected the names of the raters whose traces train it")
        self.raters = tuple(raters)
        self.window = int(window)
        count = len(self.raters)
        mu_raw, sigma2_raw = initial_raw_alignment(self.window, mu_init, sigma2_init)
        self.mu_raw = nn.Parameter(torch.full((count,), mu_raw))
        self.sigma2_raw = nn.Parameter(torch.full((count,), sigma2_raw))
        self.register_buffer("offsets", torch.arange(-self.window, self.window + 1, dtype=torch.float32))

    @property
    def mu(self) -> Tensor:
        """(R,) each rater's learned lag in frames (positive: the rater lags the video)."""
        return self.window * torch.tanh(self.mu_raw)

    @property
    def sigma2(self) -> Tensor:
        """(R,) each rater's learned spread in frames^2."""
        return F.softplus(self.sigma2_raw)

    def rater_weights(self) -> Tensor:
        """(R, 2D + 1): each rater's window."""
        offsets = self.offsets.to(self.mu_raw.dtype)
        return torch.stack([gaussian_weights(offsets, mu, s2) for mu, s2 in zip(self.mu, self.sigma2, strict=True)])

    def weights(self) -> Tensor:
        """(2D + 1,): the window of the raters' mean, the gold standard's prediction."""
        return self.rater_weights().mean(0)

    def kernel(self) -> Tensor:
        """The mean window w_k, k = -D..D, detached (streaming), shape (2D + 1,)."""
        return self.weights().detach()

    def forward(self, z: Tensor, *, per_rater: bool = False) -> Tensor:
        """z: (B, T, C) -> the predicted mean of the raters, (B, T, C); with ``per_rater`` each rater's aligned
        prediction, (B, T, R * C), rater r in channels [r * C, (r + 1) * C)."""
        if per_rater:
            weights = self.rater_weights().to(z.dtype)
            return torch.cat([lagged_convolution(z, w) for w in weights], dim=-1)
        return lagged_convolution(z, self.weights().to(z.dtype))
