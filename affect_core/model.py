"""The LSTM-BF-AA model family (paper section III), readable top to bottom.

    features x_t (NaN row = no face)
      -> front-end: [x_t, mask_t] -> FF(29)+ReLU -> FF(16)+ReLU -> LSTM(16) -> FC(m)+tanh = observation o_t
      -> smoother: baseline = fixed Gaussian; lstm-kf = Kalman filter; lstm-ekf = extended Kalman filter
         (frames without a face are predict-only filter steps)
      -> alignment: none | manual (fixed delay) | adaptive (learnable Gaussian, mu and sigma^2)
      -> y_t = [level, d level, d2 level] per affect dimension

One configuration (:class:`affect_core.config.ModelConfig`) selects every variant of the paper's Tables I-III.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from affect_core.alignment import AdaptiveAlignment, FixedGaussianSmoothing, FixedShift, lagged_convolution
from affect_core.config import ModelConfig
from affect_core.errors import AffectError


@dataclass
class ModelOutput:
    """Per-frame outputs. B sequences, T frames, n = 3 x affect dimensions.

    y: (B, T, n) aligned prediction (level, first and second derivative per dimension).
    z: (B, T, n) filtered state (for the baseline: the smoothed observation).
    P: (B, T, n, n) filter covariance, or None for the baseline (no filter).
    y_var: (B, T, k) variance of each aligned level (alignment weights applied to P's level diagonal), or None;
        computed on first access (training never reads it).
    observations: (B, T, n) the front-end's observations o_t.
    """

    y: Tensor
    z: Tensor
    P: Tensor | None
    observations: Tensor
    _variance: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    _y_var: Tensor | None = field(default=None, repr=False)

    @property
    def y_var(self) -> Tensor | None:
        if self._y_var is None and self.P is not None and self._variance is not None:
            self._y_var = self._variance(self.P)
        return self._y_var

    def levels(self) -> Tensor:
        """(B, T, k): the predicted level of each affect dimension."""
        return self.y[..., 0::3]


def finite_rows(x: Tensor) -> Tensor:
    """(B, T) bool: True where every feature of the frame is finite. x: (B, T, d).

    A row sum is finite for almost every row, and then the row is finite; only rows whose sum is not (a NaN or an
    infinity in the row, or finite values overflowing the sum) are checked feature by feature. One pass over x
    instead of the several temporaries of `isfinite(x).all(-1)`.
    """
    finite = torch.isfinite(x.sum(-1))
    if not bool(finite.all()):
        suspect = ~finite
        finite[suspect] = torch.isfinite(x[suspect]).all(-1)
    return finite


class FrontEnd(nn.Module):
    """Per-frame feed-forward layers, a unidirectional LSTM and a tanh output layer: x (B, T, d) -> o (B, T, m).

    The input is the feature vector with NaN rows replaced by zeros, plus one mask channel (1 = face present).
    """

    def __init__(self, input_dim: int, hidden_sizes: tuple[int, ...], lstm_size: int, output_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim + 1
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.feed_forward = nn.Sequential(*layers)
        self.lstm = nn.LSTM(width, lstm_size, batch_first=True)
        self.head = nn.Linear(lstm_size, output_dim)

    def forward(
        self, x: Tensor, mask: Tensor | None, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: (B, T, d) with zeros where mask is False; mask: (B, T) bool, or None when every frame is observed.
        Returns o (B, T, m) and the LSTM state."""
        h = self._input_layer(x, mask)
        if not torch.is_grad_enabled() and h.device.type == "cpu" and h.dtype == torch.float32 and h.shape[1] > 0:
            h, state = self._compiled_lstm(h, state)
        else:
            h, state = self.lstm(h, state)
        return torch.tanh(self.head(h)), state

    def _compiled_lstm(self, h: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The LSTM without gradients on the CPU (scoring, evaluation): the input projection as one matrix product,
        then the compiled recurrence `affect_core._seed_lstm.recurrent_forward`; together about twice as fast as
        nn.LSTM at the batch sizes scoring uses, and equal to it to float32 rounding. h: (B, T, D); state as
        nn.LSTM's, (1, B, H) each."""
        from affect_core import _seed_lstm

        batch, steps, width = h.shape
        lstm = self.lstm
        size = lstm.hidden_size
        pre = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, h.reshape(batch * steps, width), lstm.weight_ih_l0.T)
        if state is None:
            h0 = c0 = np.zeros((batch, size), dtype=np.float32)
        else:
            h0, c0 = (s[0].detach().to(torch.float32).contiguous().numpy() for s in state)
        hidden = np.empty((batch, steps, size), dtype=np.float32)
        last_c = np.empty((batch, 1, size), dtype=np.float32)
        unused = np.empty((batch, 1, 4 * size), dtype=np.float32), np.empty((batch, 1, size), dtype=np.float32)
        w_hh = lstm.weight_hh_l0.detach().contiguous().numpy()
        _seed_lstm.recurrent_forward(pre.detach().numpy(), w_hh, h0, c0, unused[0], last_c, unused[1], hidden)
        last = (torch.from_numpy(hidden[:, -1].copy())[None], torch.from_numpy(last_c[:, 0].copy())[None])
        return torch.from_numpy(hidden), last

    def _input_layer(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The layers before the LSTM on [x, mask]. The mask column of the first weight is added on its own rather
        than concatenating a channel to x, which would copy the whole feature tensor."""
        layers = list(self.feed_forward)
        if not layers:
            column = x.new_ones(x.shape[:-1]) if mask is None else mask.to(x.dtype)
            return torch.cat([x, column.unsqueeze(-1)], dim=-1)
        first = layers[0]
        d = x.shape[-1]
        weight, mask_weight = first.weight[:, :d], first.weight[:, d]
        h = nn.functional.linear(x, weight, first.bias + mask_weight)
        if mask is not None:  # a frame without a face is all zeros, mask 0: the layer gives its bias alone
            h[~mask] = first.bias  # in place on those few rows (a where over the whole tensor costs 6x more)
        for layer in layers[1:]:
            h = layer(h)
        return h


class AffectModel(nn.Module):
    """LSTM + Bayesian filter + alignment. See the module docstring for the data flow."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.input_dim <= 0:
            raise AffectError(f"model config: input_dim must be positive, got {config.input_dim}")
        self.config = config
        k = config.num_dims
        self.state_dim = 3 * k
        self.frontend = FrontEnd(config.input_dim, config.hidden_sizes, config.lstm_size, self.state_dim)
        self.filter: nn.Module | None = None
        self.smoothing: nn.Module | None = None
        if config.model == "baseline":
            self.smoothing = FixedGaussianSmoothing(config.smooth_sigma)
        else:
            import affect_core.filters as filters

            kind = filters.KalmanFilter if config.model == "lstm-kf" else filters.ExtendedKalmanFilter
            self.filter = kind(
                num_dims=k,
                fps=config.fps,
                q_init=config.q_init,
                r_init=config.r_init,
                p0=config.p0,
                method=config.filter_method,
            )
        self.alignment: nn.Module | None = None
        if config.align == "adaptive":
            self.alignment = AdaptiveAlignment(
                window=config.window, mu_init=config.mu_init_frames, sigma2_init=config.sigma2_init
            )
        elif config.align == "manual":
            self.alignment = FixedShift(config.manual_shift or 0)

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> ModelOutput:
        """x: (B, T, d) features, NaN rows for frames without a face; mask: optional (B, T) bool, True = observed."""
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise AffectError(f"model input: expected shape (B, T, {self.config.input_dim}), got {tuple(x.shape)}")
        observed = finite_rows(x)
        if mask is not None:
            observed = observed & mask
        # One check per call (not per frame): a batch with every frame observed skips the masking and lets the
        # Kalman filter share one covariance recursion across the batch.
        everything_observed = bool(observed.all())
        if not everything_observed:
            x = x.masked_fill(~observed.unsqueeze(-1), 0.0)  # one pass, no zero tensor
        o, _ = self.frontend(x, None if everything_observed else observed)
        P = None
        if self.filter is not None:
            out = self.filter(o, mask=None if everything_observed else observed)
            z, P = out.states, out.covariances
        else:
            z = self.smoothing(o)
        y = z if self.alignment is None else self.alignment(z)
        return ModelOutput(y=y, z=z, P=P, observations=o, _variance=self._aligned_level_variance)

    def _aligned_level_variance(self, P: Tensor) -> Tensor:
        level_var = torch.diagonal(P, dim1=-2, dim2=-1)[..., 0::3]
        if isinstance(self.alignment, AdaptiveAlignment):
            return lagged_convolution(level_var, self.alignment.weights().to(P.dtype))
        if self.alignment is not None:
            return self.alignment(level_var)
        return level_var

    def alignment_parameters(self) -> list[nn.Parameter]:
        """The parameters that get their own learning rate (mu', s)."""
        return list(self.alignment.parameters()) if isinstance(self.alignment, AdaptiveAlignment) else []

    def learned_lag(self) -> tuple[float, float]:
        """(mu in frames, sigma^2) of the alignment: learned for AA, the fixed delay for MA, (0, 0) otherwise."""
        if isinstance(self.alignment, AdaptiveAlignment):
            return float(self.alignment.mu.detach()), float(self.alignment.sigma2.detach())
        if isinstance(self.alignment, FixedShift):
            return float(self.alignment.shift), 0.0
        return 0.0, 0.0
