"""Chunked prediction of long videos in bounded memory, equal to predicting the whole video at once.

A video streams through in chunks of raw feature rows. Each stage keeps only the context it needs:

- the feature transform keeps the last rows its pooling window reaches back to, and waits for the rows it reaches
  forward to (standardisation and PCA are per frame);
- the causal stages (:meth:`AffectModel.causal`: the LSTM's (h, c), the filter's last (z, P)) carry their state
  across chunks;
- the non-causal stages (:meth:`AffectModel.noncausal_kernels`: the baseline's smoothing, the alignment
  y_t = sum_k w_k z_{t-k}) are :class:`StreamingLaggedConvolution`: they hold the last D inputs and wait for the
  next D, with the same replicate padding at the true ends of the video as
  :func:`affect_core.alignment.lagged_convolution`.

Memory is O(chunk + window), whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from affect_core.alignment import renormalised
from affect_core.features import FeatureTransform
from affect_core.model import AffectModel, first_nonfinite, level_variances, nonfinite_error, output_map


class StreamingLaggedConvolution:
    """y_t = sum_{k=-D..D} w_k z_{t-k} over a sequence that arrives in pieces, replicate padding at its true ends.

    weights: shape (2D + 1,). push() takes (L, C) rows and returns the outputs whose right context has arrived;
    finish() returns the rest. Concatenated, the outputs equal ``lagged_convolution`` over the whole sequence.
    """

    def __init__(self, weights: Tensor) -> None:
        self.kernel = weights.flip(0).view(1, 1, -1)
        self.half = (weights.shape[0] - 1) // 2
        self.buffer: Tensor | None = None
        self.start = 0  # sequence index of buffer[0] (negative while the left padding is held)
        self.emitted = 0  # sequence index of the next output

    def push(self, rows: Tensor) -> Tensor:
        if rows.shape[0] == 0:
            return rows
        if self.buffer is None:
            self.buffer = torch.cat([rows[:1].expand(self.half, -1), rows])
            self.start = -self.half
        else:
            self.buffer = torch.cat([self.buffer, rows])
        return self._emit(self.start + self.buffer.shape[0] - self.half)

    def finish(self) -> Tensor:
        if self.buffer is None:
            return torch.zeros(0, 0)
        end = self.start + self.buffer.shape[0]
        self.buffer = torch.cat([self.buffer, self.buffer[-1:].expand(self.half, -1)])
        return self._emit(end)

    def _convolve(self, segment: Tensor) -> Tensor:
        """The outputs of a segment (L, C) holding their whole windows: (L - 2D, C). Non-finite values are left out
        as :func:`affect_core.alignment.lagged_convolution` leaves them out."""
        kernel = self.kernel.to(segment.dtype)

        def convolve(signal: Tensor) -> Tensor:
            return F.conv1d(signal.T.unsqueeze(1), kernel).squeeze(1).T

        finite = torch.isfinite(segment)
        if bool(finite.all()):
            return convolve(segment)
        missing = F.conv1d((~finite).to(segment.dtype).T.unsqueeze(1), torch.ones_like(kernel)).squeeze(1).T
        return renormalised(
            convolve(torch.where(finite, segment, 0.0)), convolve(finite.to(segment.dtype)), missing, kernel.sum()
        )

    def _emit(self, upto: int) -> Tensor:
        assert self.buffer is not None
        if upto <= self.emitted:
            return self.buffer[:0]
        lo = self.emitted - self.half - self.start
        segment = self.buffer[lo : upto + self.half - self.start]
        out = self._convolve(segment)
        self.emitted = upto
        drop = self.emitted - self.half - self.start
        self.buffer = self.buffer[drop:]
        self.start += drop
        return out


class StreamingFeatureTransform:
    """Applies a fitted FeatureTransform to rows arriving in pieces, exactly as on the whole sequence."""

    def __init__(self, transform: FeatureTransform | None) -> None:
        self.transform = transform
        window = transform.pooling_window if transform is not None else 0
        self.behind = window // 2
        self.ahead = max(window - window // 2 - 1, 0)
        self.buffer: np.ndarray | None = None
        self.start = 0
        self.emitted = 0

    def _apply(self, rows: np.ndarray) -> np.ndarray:
        return self.transform.apply(rows) if self.transform is not None else np.asarray(rows, np.float32)

    def push(self, rows: np.ndarray) -> np.ndarray:
        self.buffer = rows if self.buffer is None else np.concatenate([self.buffer, rows])
        return self._emit(self.start + len(self.buffer) - self.ahead)

    def finish(self) -> np.ndarray:
        if self.buffer is None:
            return np.zeros((0, 0), np.float32)
        return self._emit(self.start + len(self.buffer))

    def _emit(self, upto: int) -> np.ndarray:
        assert self.buffer is not None
        if upto <= self.emitted:
            return self._apply(self.buffer[:0])
        # The segment holds every row the pooling windows of [emitted, upto) reach; at the true start it begins at
        # row 0, so windows clip there exactly as they do on the whole sequence.
        lo = max(self.emitted - self.behind, self.start)
        out = self._apply(self.buffer[lo - self.start : upto + self.ahead - self.start])
        out = out[self.emitted - lo : self.emitted - lo + (upto - self.emitted)]
        self.emitted = upto
        keep_from = max(self.emitted - self.behind, self.start)
        self.buffer = self.buffer[keep_from - self.start :]
        self.start = keep_from
        return out


@torch.no_grad()
def stream_predict(
    model: AffectModel,
    transform: FeatureTransform | None,
    chunks: Iterable[np.ndarray],
    *,
    seed: int = 0,
    name: str = "stream",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Predict a video given as consecutive chunks of raw feature rows (NaN rows = no face) with seed ``seed``.

    Yields (levels (c, k), variances (c, k)) for consecutive frames; all yields together cover the video once. The
    result equals :func:`affect_core.inference.predict_features` on the whole video (up to float rounding): the
    levels through :func:`affect_core.model.output_map`, and a model state that is not finite an AffectError naming
    ``name`` (the video) and the first such frame.
    """
    was_training = model.training
    model.eval()
    param = model.frontend.head_bias
    k = model.config.num_dims
    filtered = bool(model.filters)
    features = StreamingFeatureTransform(transform)
    convs = [StreamingLaggedConvolution(w.to(param)) for w in model.noncausal_kernels(seed)]
    state = None
    fed = 0  # frames through the causal stages so far

    def causal(x_np: np.ndarray) -> Tensor:
        """The causal stages over one piece: rows (c, n + k) = [z, level variances] (baseline: [o])."""
        nonlocal state, fed
        x = torch.as_tensor(x_np, dtype=param.dtype, device=param.device).unsqueeze(0)
        out = model.causal(x, state=state, seeds=[seed])
        state = out.state
        z, P = out.states[seed], out.covariances[seed]
        assert z is not None
        rows = z[0] if P is None else torch.cat([z[0], level_variances(P[0]).to(z.dtype)], dim=-1)
        first = int(first_nonfinite(rows.unsqueeze(0))[0])
        if first >= 0:
            raise nonfinite_error(name, fed + first)
        fed += rows.shape[0]
        return rows

    def through_stages(rows: Tensor, final: bool) -> Tensor:
        for conv in convs:
            head = conv.push(rows) if rows.shape[0] else rows
            rows = torch.cat([head, conv.finish()]) if final else head
        return rows

    def emit(rows: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        if rows.shape[0] == 0:
            return None
        levels = output_map(rows[:, 0 : 3 * k : 3]).cpu().numpy()
        if not filtered:
            return levels, np.full_like(levels, np.nan)
        return levels, rows[:, 3 * k :].cpu().numpy()

    try:
        for chunk in chunks:
            x = features.push(np.asarray(chunk))
            if len(x):
                out = emit(through_stages(causal(x), final=False))
                if out is not None:
                    yield out
        x = features.finish()
        rows = causal(x) if len(x) else torch.zeros(0, 3 * k + (k if filtered else 0))
        out = emit(through_stages(rows.to(param), final=True))
        if out is not None:
            yield out
    finally:
        model.train(was_training)


def iter_chunks(features: np.ndarray, chunk_frames: int) -> Iterator[np.ndarray]:
    """Consecutive row blocks of at most ``chunk_frames`` rows."""
    for start in range(0, len(features), max(int(chunk_frames), 1)):
        yield features[start : start + chunk_frames]
