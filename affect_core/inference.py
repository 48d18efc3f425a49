"""Running a trained model over whole videos: the one prediction path used by evaluation, training and scoring.

:func:`predict_features` runs one video through ``AffectModel.forward``; :func:`predict_batch` gives the same result
for many videos at a fraction of the cost by stacking them into one padded batch (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.features import FeatureTransform
from affect_core.metrics import average_over_sequences, sequence_metrics
from affect_core.model import AffectModel, finite_rows

# Time steps of a padded batch that go through the front-end together (see _forward_padded).
FRONTEND_PIECE = 1024


@dataclass
class Prediction:
    """Per-frame predictions of one video. levels, variances: (T, k) for the model's affect dimensions."""

    dimensions: tuple[str, ...]
    levels: np.ndarray
    variances: np.ndarray

    def track(self, dimension: str) -> tuple[np.ndarray, np.ndarray]:
        j = self.dimensions.index(dimension)
        return self.levels[:, j], self.variances[:, j]


@torch.no_grad()
def predict_features(
    model: AffectModel, transform: FeatureTransform | None, features: np.ndarray, *, chunk_frames: int | None = None
) -> Prediction:
    """features: (T, d) raw features (NaN rows = no face) -> the model's per-frame prediction.

    chunk_frames: videos longer than this stream through the model in chunks (bounded memory, same result).
    """
    if chunk_frames is not None and len(features) > chunk_frames:
        from affect_core.streaming import iter_chunks, stream_predict

        parts = list(stream_predict(model, transform, iter_chunks(features, chunk_frames)))
        levels = np.concatenate([p[0] for p in parts])
        variances = np.concatenate([p[1] for p in parts])
        return Prediction(model.config.affect_dimensions, levels, variances)
    x = transform.apply(features) if transform is not None else np.asarray(features, dtype=np.float32)
    param = next(model.parameters())
    xt = torch.as_tensor(x, dtype=param.dtype, device=param.device).unsqueeze(0)
    was_training = model.training
    model.eval()
    out = model(xt)
    model.train(was_training)
    levels = out.levels()[0].cpu().numpy()
    if out.y_var is None:
        variances = np.full_like(levels, np.nan)
    else:
        variances = out.y_var[0].cpu().numpy()
    return Prediction(model.config.affect_dimensions, levels, variances)


def predict_batch(
    model: AffectModel,
    transform: FeatureTransform | None,
    videos: Sequence[np.ndarray],
    *,
    chunk_frames: int | None = None,
) -> list[Prediction]:
    """Per-video predictions of several videos, each equal to :func:`predict_features` on that video alone.

    videos: raw features (T_i, d) per video, NaN rows = no face. The videos of at most ``chunk_frames`` frames go
    through the model together: per video, the front-end LSTM costs less than half as much in a batch of 16 as alone.
    They are padded at the end to the longest; the causal stages (front-end, filter) never carry a padding frame back
    to the real frames before it, and the non-causal ones (the baseline's smoothing, the alignment and its variance) run
    per video on its true length, so the replicate padding sits at the video's own end. Longer videos stream through
    :func:`predict_features` in chunks, one at a time (bounded memory). The caller bounds the batch's size.
    """
    dims = model.config.affect_dimensions
    out: list[Prediction | None] = [None] * len(videos)
    stacked = []
    for i, features in enumerate(videos):
        if len(features) == 0:
            out[i] = Prediction(dims, np.zeros((0, len(dims)), np.float32), np.zeros((0, len(dims)), np.float32))
        elif chunk_frames is not None and len(features) > chunk_frames:
            out[i] = predict_features(model, transform, features, chunk_frames=chunk_frames)
        else:
            stacked.append(i)
    if stacked:
        was_training = model.training
        model.eval()
        try:
            xs = [_model_input(transform, videos[i]) for i in stacked]
            for i, (levels, variances) in zip(stacked, _forward_padded(model, xs), strict=True):
                out[i] = Prediction(dims, levels, variances)
        finally:
            model.train(was_training)
    return [p for p in out if p is not None]


def _model_input(transform: FeatureTransform | None, features: np.ndarray) -> np.ndarray:
    return transform.apply(features) if transform is not None else np.asarray(features, dtype=np.float32)


@torch.inference_mode()
def _forward_padded(model: AffectModel, xs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``AffectModel.forward`` over videos of different lengths: xs (T_i, d) transformed features, NaN rows = no face.

    Returns per video (levels (T_i, k), variances (T_i, k); NaN variances without a filter).
    """
    param = next(model.parameters())
    lengths = [len(x) for x in xs]
    width = max(lengths)
    # Padding rows are observed zeros. The causal stages never carry them back to the real frames before them, and
    # an observed frame keeps the filter's covariance bounded (a long predict-only tail would let it grow without
    # bound). So when every real frame has a face the batch runs without a mask exactly as forward() does, and the
    # Kalman filter shares one covariance recursion across the batch.
    padded = np.zeros((len(xs), width, xs[0].shape[1]), dtype=np.float32)
    for b, x in enumerate(xs):
        padded[b, : len(x)] = x
    if padded.shape[-1] != model.config.input_dim:
        raise AffectError(f"model input: expected shape (B, T, {model.config.input_dim}), got {padded.shape}")
    x = torch.from_numpy(padded).to(dtype=param.dtype, device=param.device)
    observed = finite_rows(x)
    mask: Tensor | None = None
    if not bool(observed.all()):
        mask = observed
        x.masked_fill_(~mask.unsqueeze(-1), 0.0)
    # The front-end in pieces of the time axis, its LSTM state carried across (it is causal: the same result). The
    # pieces' activations stay in cache, where the whole batch's would not: a third less time.
    pieces = []
    state = None
    for start in range(0, width, FRONTEND_PIECE):
        stop = start + FRONTEND_PIECE
        o, state = model.frontend(x[:, start:stop], None if mask is None else mask[:, start:stop], state)
        pieces.append(o)
    o = torch.cat(pieces, dim=1)
    P = None
    if model.filter is not None:
        filtered = model.filter(o, mask=mask)
        z, P = filtered.states, filtered.covariances
    else:
        z = o
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(xs)
    k = model.config.num_dims
    # The non-causal stages, per video on its true length; videos of equal length share one call. They act channel
    # by channel, so only the level channels are smoothed and aligned, and the levels' variances (the alignment
    # applied to P's level diagonal, as ModelOutput.y_var computes them) go through the same call beside them.
    for length in sorted(set(lengths)):
        rows = [b for b, n in enumerate(lengths) if n == length]
        index = torch.tensor(rows, device=x.device)
        level = z.index_select(0, index)[:, :length, 0::3]
        if model.smoothing is not None:
            level = model.smoothing(level)
        if P is None:
            levels = _aligned(model, level).cpu().numpy()
            variances = np.full_like(levels, np.nan)
        elif P.stride(0) == 0:  # one covariance sequence shared by the batch (no mask)
            levels = _aligned(model, level).cpu().numpy()
            shared = _aligned(model, torch.diagonal(P[:1, :length], dim1=-2, dim2=-1)[..., 0::3].to(level.dtype))
            variances = np.repeat(shared.cpu().numpy(), len(rows), axis=0)
        else:
            level_var = torch.diagonal(P.index_select(0, index)[:, :length], dim1=-2, dim2=-1)[..., 0::3]
            both = _aligned(model, torch.cat([level, level_var.to(level.dtype)], dim=-1)).cpu().numpy()
            levels, variances = both[..., :k], both[..., k:]
        for j, b in enumerate(rows):
            results[b] = (levels[j], variances[j])
    return [r for r in results if r is not None]


def _aligned(model: AffectModel, channels: Tensor) -> Tensor:
    """The model's alignment, which acts on each channel of (B, T, C) alone, on any set of channels."""
    return channels if model.alignment is None else model.alignment(channels)


def evaluate_videos(
    model: AffectModel, transform: FeatureTransform | None, videos: list[Video]
) -> dict[str, dict[str, float]]:
    """AVEC protocol metrics per affect dimension of the model: {dimension: {ccc, rmse, pcc}}.

    Videos without labels for a dimension are left out of that dimension's average.
    """
    per_dim: dict[str, list[dict[str, float]]] = {d: [] for d in model.config.affect_dimensions}
    for video in videos:
        if not video.labelled:
            continue
        pred = predict_features(model, transform, video.features)
        for dim in per_dim:
            gold = video.labels(dim)
            if gold is None or not np.isfinite(gold).any():
                continue
            per_dim[dim].append(sequence_metrics(pred.track(dim)[0], gold))
    return {dim: average_over_sequences(rows) for dim, rows in per_dim.items()}
