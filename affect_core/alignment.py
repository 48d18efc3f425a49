"""Alignment of predictions with the annotators' reaction lag (paper section III-C) and the baseline's smoothing.

All layers map a per-frame sequence ``z`` of shape (B, T, C) to ``y`` of the same shape with
y_t = sum_{k=-D..D} w_k z_{t-k}, edges padded by replicating the end values. A weight peaked at k = mu > 0 makes y_t
look mu frames into the past: the labels lag the video by mu frames. A non-finite value of ``z`` is a missing value:
it reaches no output outside its own window (:func:`lagged_convolution`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from affect_core.parallel import Workers

# Where the finite frames of an output's window carry less than this share of its weight, the output is NaN: its
# value would rest on frames that are not there (and on the FFT's rounding, about 1e-16 of the window's values).
MIN_FINITE_WEIGHT = 1e-9


def lagged_convolution(z: Tensor, weights: Tensor) -> Tensor:
    """y_t = sum_k weights[k + D] * z_{t-k}, k = -D..D, replicate padding at both ends.

    z: shape (B, T, C). weights: shape (2D + 1,). Returns (B, T, C) in the dtype of z.

    Computed as one FFT product (O(T log T) whatever D; a direct convolution with the default 201-tap alignment
    window costs about as much as the whole LSTM front-end, forward and backward): in float64, but in the dtype of z
    where a gradient is taken and every value is finite (training: float32 rounding for float32 input, about 1e-6
    of a sequence's largest value).

    A non-finite value (NaN, +-inf) is a missing value, not a number: it reaches no output outside its own window.
    An output whose window holds one is the weighted mean over the window's finite values, the weights renormalised
    over them (:func:`renormalised`); it is NaN only where those carry less than ``MIN_FINITE_WEIGHT`` of the weight.
    Where every value of a window is finite the output is exactly the plain convolution, and so is every output of
    an input without a non-finite value (an FFT would otherwise smear one NaN over the whole sequence).
    """
    half = (weights.shape[0] - 1) // 2
    if half == 0:
        return z * weights[0]
    if _known_finite(z):
        # Training's precision where a gradient is taken (z's own dtype: float32 rounding, about 1e-6 of a
        # sequence's largest value, on states whose values are of one size); float64 otherwise, where variances
        # are aligned beside the levels (small values beside large ones in one sequence, which must stay positive)
        # and a video's predictions must not depend on the other videos of its batch (its length sets the FFT's).
        training = torch.is_grad_enabled() and (z.requires_grad or weights.requires_grad)
        dtype = z.dtype if training else torch.float64
        return _ReplicateConvolution.apply(z.to(dtype), weights.to(dtype)).to(z.dtype)
    b, t, c = z.shape
    x = z.transpose(1, 2).reshape(b * c, t)
    x = F.pad(x.to(torch.float64).unsqueeze(1), (half, half), mode="replicate").squeeze(1)  # (BC, T + 2D)
    # The full linear convolution of the padded signal with w, read at 2D .. 2D + T - 1, is y; a circular one of
    # length N > T + 2D agrees with it there.
    size = _fft_size(t + 2 * half + 1)
    w_spectrum = torch.fft.rfft(weights.to(torch.float64), n=size)

    def convolve(signal: Tensor) -> Tensor:
        return torch.fft.irfft(torch.fft.rfft(signal, n=size) * w_spectrum, n=size)[:, 2 * half : 2 * half + t]

    finite = torch.isfinite(x)
    y = renormalised(
        convolve(torch.where(finite, x, 0.0)),
        convolve(finite.to(torch.float64)),
        _window_counts(~finite, 2 * half + 1),
        weights.to(torch.float64).sum(),
    )
    return y.to(z.dtype).view(b, c, t).transpose(1, 2)


class _ReplicateConvolution(torch.autograd.Function):
    """y_t = sum_k w[k + D] z_{t-k} along the time axis of z (B, T, C), replicate padding, as one circular
    convolution of length N >= T + 2D + 1 by FFT, with its adjoints written out: the FFTs autograd would run through
    `F.pad`, `rfft`, `irfft` and the slice, without the transposed copies and the zero-filled intermediates it makes
    for each of them. The transforms run along rows of (B, C, N): the copy that pads z also lays it out so, and
    contiguous rows transform faster than the middle axis of (B, N, C) (the same values).

    The padded sequence p (length N: z_0 D times, z, z_{T-1} D times, zeros) convolved with w, read at
    2D .. 2D + T - 1, is y. Adjoints, for g the adjoint of y placed at 2D .. 2D + T - 1 of zeros: of p, the circular
    correlation of g with w; of w, that of g with p summed over the sequences and channels; of z, p's adjoint with
    each end's D + 1 entries summed into that end. First derivatives only (training needs no more)."""

    @staticmethod
    def forward(ctx, z: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
        t = z.shape[1]
        half = (weights.shape[0] - 1) // 2
        size = _fft_size(t + 2 * half + 1)
        rows = z.transpose(1, 2)  # (B, C, T), a view
        padded = z.new_empty(z.shape[0], z.shape[2], size)
        padded[..., :half] = rows[..., :1]
        padded[..., half : half + t] = rows
        padded[..., half + t : t + 2 * half] = rows[..., -1:]
        padded[..., t + 2 * half :] = 0.0
        spectrum = torch.fft.rfft(padded)
        w_spectrum = torch.fft.rfft(weights, n=size)
        ctx.save_for_backward(spectrum, w_spectrum)
        ctx.shape = (t, half, size, weights.shape[0])
        y = torch.fft.irfft(spectrum * w_spectrum, n=size)[..., 2 * half : 2 * half + t]
        return y.transpose(1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_y: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        spectrum, w_spectrum = ctx.saved_tensors
        t, half, size, taps = ctx.shape
        placed = g_y.new_zeros(g_y.shape[0], g_y.shape[2], size)
        placed[..., 2 * half : 2 * half + t] = g_y.transpose(1, 2)
        g_spectrum = torch.fft.rfft(placed)
        g_z = g_w = None
        if ctx.needs_input_grad[0]:
            g_padded = torch.fft.irfft(g_spectrum * w_spectrum.conj(), n=size)
            g_z = g_padded[..., half : half + t].transpose(1, 2).contiguous()
            g_z[:, 0] += g_padded[..., :half].sum(-1)
            g_z[:, -1] += g_padded[..., half + t : t + 2 * half].sum(-1)
        if ctx.needs_input_grad[1]:
            g_w = torch.fft.irfft((g_spectrum * spectrum.conj()).sum((0, 1)), n=size)[:taps]
        return g_z, g_w


def _known_finite(values: Tensor) -> bool:
    """Whether every value is known to be finite without waiting for a device: on the CPU the check costs no wait
    (one sum: it is finite exactly when every value is, short of an overflow, which only sends finite values down the
    other way, whose outputs are the same); elsewhere the answer is "not known" and the convolution takes the way
    that leaves non-finite values out (whose outputs equal the plain convolution's where every value is finite)."""
    return values.device.type == "cpu" and bool(torch.isfinite(values.sum()))


def renormalised(weighted: Tensor, finite_weight: Tensor, missing: Tensor, total: Tensor) -> Tensor:
    """The outputs of a convolution that leaves non-finite values out: ``weighted`` (the convolution of the input with
    its non-finite values set to 0) where the window has no non-finite value (``missing`` == 0), else the weighted
    mean over the window's finite values, ``weighted * total / finite_weight`` (``finite_weight``: the convolution of
    the finite-value indicator; ``total``: the sum of the weights); NaN where the finite values carry less than
    ``MIN_FINITE_WEIGHT`` of the weight. Shapes broadcast; the gradients stay finite."""
    enough = finite_weight.abs() > MIN_FINITE_WEIGHT * total.abs()
    mean = weighted * total / torch.where(enough, finite_weight, torch.ones_like(finite_weight))
    return torch.where(missing == 0, weighted, torch.where(enough, mean, torch.full_like(mean, math.nan)))


def _window_counts(flags: Tensor, width: int) -> Tensor:
    """(R, L - width + 1): per row of ``flags`` (R, L) bool, how many are set in each window of ``width``
    consecutive entries (exact: integer counts)."""
    counts = F.pad(flags.to(torch.int64).cumsum(-1), (1, 0))
    return counts[:, width:] - counts[:, :-width]


def _fft_size(minimum: int) -> int:
    """The smallest 2^a 3^b 5^c >= minimum (sizes the FFT handles fastest)."""
    best = 1 << max(minimum - 1, 0).bit_length()
    five = 1
    while five < best:
        three = five
        while three < best:
            size = three
            while size < minimum:
                size *= 2
            best = min(best, size)
            three *= 3
        five *= 5
    return best


def gaussian_weights(offsets: Tensor, mu: Tensor, sigma2: Tensor) -> Tensor:
    """(14) Gaussian alignment weights fbar_{k - mu}, normalised over the window. offsets: (2D + 1,)."""
    logits = -((offsets - mu) ** 2) / (2.0 * sigma2)
    return torch.softmax(logits, dim=0)


def initial_raw_alignment(window: int, mu_init: float, sigma2_init: float) -> tuple[float, float]:
    """The raw parameters (mu', s) of a Gaussian alignment with mu = D tanh(mu') = mu_init (kept inside the window)
    and sigma^2 = softplus(s) = sigma2_init: the parameterisation of every adaptive alignment (one, or one per
    rater)."""
    ratio = max(min(mu_init / max(window, 1), 0.999), -0.999)
    return math.atanh(ratio), _inverse_softplus(sigma2_init)


class AdaptiveAlignment(nn.Module):
    """Learnable Gaussian alignment (AA): mu = D tanh(mu'), sigma^2 = softplus(s)."""

    def __init__(self, *, window: int = 100, mu_init: float = 0.0, sigma2_init: float = 25.0) -> None:
        super().__init__()
        self.window = int(window)
        mu_raw, sigma2_raw = initial_raw_alignment(self.window, mu_init, sigma2_init)
        self.mu_raw = nn.Parameter(torch.tensor(mu_raw))
        self.sigma2_raw = nn.Parameter(torch.tensor(sigma2_raw))
        self.register_buffer("offsets", torch.arange(-self.window, self.window + 1, dtype=torch.float32))

    @property
    def mu(self) -> Tensor:
        """The learned lag in frames (positive: labels lag the video)."""
        return self.window * torch.tanh(self.mu_raw)

    @property
    def sigma2(self) -> Tensor:
        return F.softplus(self.sigma2_raw)

    def weights(self) -> Tensor:
        return gaussian_weights(self.offsets.to(self.mu_raw.dtype), self.mu, self.sigma2)

    def kernel(self) -> Tensor:
        """The weights w_k, k = -D..D, of y_t = sum_k w_k z_{t-k} (detached), shape (2D + 1,)."""
        return self.weights().detach()

    def forward(self, z: Tensor) -> Tensor:
        """z: (B, T, C) -> y: (B, T, C)."""
        return lagged_convolution(z, self.weights().to(z.dtype))


class FixedShift(nn.Module):
    """Manual alignment (MA): y_t = z_{t - shift}, a fixed integer delay in frames, replicate padding."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = int(shift)

    def kernel(self) -> Tensor:
        """The delay as convolution weights w_k, k = -|shift|..|shift|: one at k = shift."""
        one_hot = torch.zeros(2 * abs(self.shift) + 1)
        one_hot[abs(self.shift) + self.shift] = 1.0
        return one_hot

    def forward(self, z: Tensor) -> Tensor:
        s = self.shift
        if s == 0:
            return z
        if s > 0:
            head = z[:, :1].expand(-1, min(s, z.shape[1]), -1)
            return torch.cat([head, z[:, : max(z.shape[1] - s, 0)]], dim=1)
        tail = z[:, -1:].expand(-1, min(-s, z.shape[1]), -1)
        return torch.cat([z[:, -s:], tail], dim=1)


class FixedGaussianSmoothing(nn.Module):
    """The baseline's fixed, centred Gaussian smoothing of the LSTM output (no learnable parameters)."""

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        half = max(int(math.ceil(3 * sigma)), 0)
        offsets = torch.arange(-half, half + 1, dtype=torch.float32)
        weights = gaussian_weights(offsets, torch.tensor(0.0), torch.tensor(max(sigma, 1e-3) ** 2))
        self.register_buffer("weights", weights)

    def kernel(self) -> Tensor:
        """The smoothing weights, shape (2D + 1,)."""
        return self.weights

    def forward(self, z: Tensor) -> Tensor:
        return lagged_convolution(z, self.weights.to(z.dtype))


def shift_labels_back(labels: np.ndarray, shift: int) -> np.ndarray:
    """label_{t + shift} aligned to frame t (the end replicated); the inverse of :class:`FixedShift`."""
    if shift <= 0:
        return labels
    out = np.empty_like(labels)
    out[:-shift] = labels[shift:]
    out[-shift:] = labels[-1]
    return out


def choose_manual_shift(
    features: list[np.ndarray],
    labels: list[np.ndarray],
    *,
    fps: float,
    max_seconds: float = 4.0,
    step_seconds: float = 0.2,
    ridge: float = 1.0,
    workers: Workers | None = None,
) -> int:
    """Grid search of the manual-alignment delay on the training split (0 to 4 s, 0.2 s step).

    For each candidate delay s, a ridge regression from the frame's features x_t to label_{t+s} is fitted on all
    training sequences; the delay whose fit has the best mean CCC wins. Returns the delay in frames.

    features: per video (T, d) with NaN rows for frames without a face; labels: per video (T,) with NaN unlabelled.
    workers: data-parallel workers, each with its shard of the videos: the standardisation and the normal equations
    are summed over them and the per-video CCCs gathered, so every worker finds the delay of the whole split.
    """
    from affect_core.metrics import sequence_metrics

    def summed(value: np.ndarray) -> np.ndarray:
        return value if workers is None else np.sum(workers.gather(value), axis=0)

    steps = int(round(max_seconds / step_seconds))
    candidates = sorted({int(round(i * step_seconds * fps)) for i in range(steps + 1)})
    xs = [np.nan_to_num(np.asarray(f, dtype=np.float64)) for f in features]
    width = xs[0].shape[1] if xs else 0
    width = int(max(workers.gather(width))) if workers is not None else width
    moments = summed(
        np.stack([sum((x.sum(0) for x in xs), np.zeros(width)), sum(((x * x).sum(0) for x in xs), np.zeros(width))])
    )
    frames = float(summed(np.array([sum(len(x) for x in xs)], dtype=np.float64))[0])
    mean = moments[0] / frames
    std = np.sqrt(np.maximum(moments[1] / frames - mean**2, 0.0)) + 1e-8
    xs = [np.hstack([(x - mean) / std, np.ones((len(x), 1))]) for x in xs]
    systems, all_targets = [], []
    for shift in candidates:
        targets = [shift_labels_back(np.asarray(lab, dtype=np.float64), shift) for lab in labels]
        gram = np.zeros((width + 1, width + 1))
        moment = np.zeros(width + 1)
        for x, t in zip(xs, targets, strict=True):
            rows = np.isfinite(t)
            gram += x[rows].T @ x[rows]
            moment += x[rows].T @ t[rows]
        systems.append(np.concatenate([gram.ravel(), moment]))
        all_targets.append(targets)
    systems = summed(np.stack(systems)) if systems else np.zeros((0,))
    per_video = []
    for targets, system in zip(all_targets, systems, strict=True):
        gram, moment = system[: (width + 1) ** 2].reshape(width + 1, width + 1), system[(width + 1) ** 2 :]
        coef = np.linalg.solve(gram + ridge * np.eye(width + 1), moment)
        per_video.append([sequence_metrics(x @ coef, t)["ccc"] for x, t in zip(xs, targets, strict=True)])
    if workers is not None:
        per_video = [sum(parts, []) for parts in zip(*workers.gather(per_video), strict=True)]
    scores = [float(np.mean(cccs)) if cccs else -np.inf for cccs in per_video]
    return candidates[int(np.argmax(scores))] if scores else 0


def _inverse_softplus(value: float) -> float:
    return float(value + math.log(-math.expm1(-value)))
