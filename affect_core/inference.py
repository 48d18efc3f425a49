"""Running a trained model over whole videos: the one prediction path of evaluation (in training too) and scoring.

:func:`predict_batch` stacks videos into one padded batch through :meth:`AffectModel.causal` (front-end and filter) and
applies :meth:`AffectModel.noncausal` (smoothing, alignment) per video on its true length; videos longer than a chunk
stream through :func:`affect_core.streaming.stream_predict` (bounded memory, the same result).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.features import FeatureTransform
from affect_core.metrics import average_over_sequences, sequence_metrics
from affect_core.model import (
    AffectModel,
    first_nonfinite,
    host_face_rows,
    level_variances,
    nonfinite_error,
    output_map,
)
from affect_core.parallel import Workers, natural_key

# Frames of one padded evaluation batch (all its videos together): bounds the memory of evaluating a large split.
EVALUATION_BATCH_FRAMES = 1 << 19


@dataclass
class Prediction:
    """Per-frame predictions of one video. levels, variances: (T, k) for the model's affect dimensions."""

    dimensions: tuple[str, ...]
    levels: np.ndarray
    variances: np.ndarray

    def track(self, dimension: str) -> tuple[np.ndarray, np.ndarray]:
        j = self.dimensions.index(dimension)
        return self.levels[:, j], self.variances[:, j]


def predict_features(
    model: AffectModel, transform: FeatureTransform | None, features: np.ndarray, *, chunk_frames: int | None = None
) -> Prediction:
    """features: (T, d) raw features (NaN rows = no face) -> a one-seed model's per-frame prediction.

    chunk_frames: a video longer than this streams through the model in chunks (bounded memory, same result).
    """
    return predict_batch(model, transform, [features], chunk_frames=chunk_frames)[0]


def predict_batch(
    model: AffectModel,
    transform: FeatureTransform | None,
    videos: Sequence[np.ndarray],
    *,
    chunk_frames: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Prediction]:
    """Per-video predictions of a one-seed model for several videos, each equal to predicting that video alone.

    videos: raw features (T_i, d) per video, NaN rows = no face. The videos of at most ``chunk_frames`` frames go
    through the model together: per video, the front-end LSTM costs less than half as much in a batch of 16 as alone.
    Longer videos stream through in chunks, one at a time (bounded memory). The caller bounds the batch's size.
    names: the videos' ids, for the error that a model state gone non-finite raises (default: their positions).
    """
    names = [f"video {i}" for i in range(len(videos))] if names is None else [f"video {n!r}" for n in names]
    dims = model.config.affect_dimensions
    out: list[Prediction | None] = [None] * len(videos)
    stacked = []
    for i, features in enumerate(videos):
        if len(features) == 0:
            out[i] = Prediction(dims, np.zeros((0, len(dims)), np.float32), np.zeros((0, len(dims)), np.float32))
        elif chunk_frames is not None and len(features) > chunk_frames:
            from affect_core.streaming import iter_chunks, stream_predict

            parts = list(stream_predict(model, transform, iter_chunks(features, chunk_frames), name=names[i]))
            out[i] = Prediction(dims, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        else:
            stacked.append(i)
    if stacked:
        xs = model_inputs(transform, [videos[i] for i in stacked])
        outputs = forward_padded(model, xs, names=[names[i] for i in stacked])[0]
        for i, (levels, variances) in zip(stacked, outputs, strict=True):
            out[i] = Prediction(dims, levels, variances)
    return [p for p in out if p is not None]


def model_input(transform: FeatureTransform | None, features: np.ndarray) -> np.ndarray:
    """The model's input of raw features (T, d): the fitted transform applied, float32."""
    return transform.apply(features) if transform is not None else np.asarray(features, dtype=np.float32)


def model_inputs(transform: FeatureTransform | None, videos: Sequence[np.ndarray]) -> list[np.ndarray]:
    """:func:`model_input` of several videos (T_i, d), as views of one array: a transform that works frame by frame
    (no pooling) runs once over their frames together."""
    if transform is None or transform.pooling_window > 0 or len(videos) < 2:
        return [model_input(transform, features) for features in videos]
    joined = transform.apply(np.concatenate(videos))
    return np.split(joined, np.cumsum([len(features) for features in videos])[:-1])


def forward_padded(
    model: AffectModel, xs: list[np.ndarray], seeds: list[int] | None = None, *, names: Sequence[str] | None = None
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The model over videos of different lengths: xs (T_i, d) transformed features, NaN rows = no face.

    A model state (filtered state or its level variances) that is not finite on a frame of a video raises an
    AffectError naming the video (``names``: how to call them, default "video <position>") and the first such frame.

    Returns, per seed in ``seeds`` (default all), per video: (levels (T_i, k), variances (T_i, k); NaN variances
    without a filter). The videos are padded at the end to the longest with observed zero rows: the causal stages never
    carry a padding frame back to the real frames before it, and an observed frame keeps the filter's covariance
    bounded (a long predict-only tail would not), so when every real frame has a face the batch runs unmasked and the
    Kalman filter shares one covariance recursion across it. The frames with a face are found here, on the host, so the
    model's device is never waited for until the results come back.
    """
    param = model.frontend.head_bias
    lengths = [len(x) for x in xs]
    longest, width = max(lengths), xs[0].shape[1]
    if min(lengths) == longest:
        padded = np.stack(xs).astype(np.float32, copy=False)
    else:  # every frame to its place in one scatter
        counts = np.asarray(lengths)
        starts = np.repeat(np.arange(len(xs)) * longest - np.cumsum(counts) + counts, counts)
        padded = np.zeros((len(xs), longest, width), dtype=np.float32)
        padded.reshape(-1, width)[starts + np.arange(counts.sum())] = np.concatenate(xs)
    if padded.shape[-1] != model.config.input_dim:
        raise AffectError(f"model input: expected shape (B, T, {model.config.input_dim}), got {padded.shape}")
    observed = host_face_rows(padded)  # padded is this function's own array (np.stack copies)
    mask = None if observed is None else to_model_device(torch.from_numpy(observed), param)
    x = to_model_device(torch.from_numpy(padded), param)
    faults: list[torch.Tensor] = []
    outputs = padded_predictions(model, x, mask, lengths, seeds, faults=faults)
    for per_video in (f.cpu().tolist() for f in faults):
        for b, frame in enumerate(per_video):
            if 0 <= frame < lengths[b]:
                raise nonfinite_error(f"video {b}" if names is None else names[b], frame)
    results = []
    for per_video in outputs:
        results.append(
            [
                (
                    levels.cpu().numpy(),
                    np.full(tuple(levels.shape), np.nan, np.float32) if var is None else var.cpu().numpy(),
                )
                for levels, var in per_video
            ]
        )
    return results


@torch.inference_mode()
def padded_predictions(
    model: AffectModel,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    lengths: list[int],
    seeds: list[int] | None = None,
    *,
    faults: list[torch.Tensor] | None = None,
) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """The device side of :func:`forward_padded`: x `(B, T, d)` padded features with zero rows where ``mask`` (the
    frames with a face, `(B, T)`; None = all) is False. Returns per seed, per video (levels (T_i, k), level variances
    (T_i, k) or None without a filter), on the model's device. The non-causal stages run per video on its true length
    (videos of equal length share a call), so their replicate padding sits at the video's own end. The levels go
    through :func:`affect_core.model.output_map`. faults: when given, gets per seed the (B,) first frame of each
    sequence whose state is not finite (-1: none; padding frames included), on the device."""
    was_training = model.training
    model.eval()
    try:
        chosen = list(range(model.seeds)) if seeds is None else seeds
        causal = model.causal(x, mask=mask, seeds=chosen, checked=True)
    finally:
        model.train(was_training)
    k = model.config.num_dims
    results = []
    for s in chosen:
        z, P = causal.states[s], causal.covariances[s]
        assert z is not None
        if faults is not None:
            faults.append(first_nonfinite(z if P is None else torch.cat([z, level_variances(P).to(z.dtype)], -1)))
        per_video: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(lengths)
        for length in sorted(set(lengths)):
            rows = [b for b, n in enumerate(lengths) if n == length]
            index = torch.tensor(rows, device=x.device)
            level = z.index_select(0, index)[:, :length, 0::3]
            variances: torch.Tensor | None
            if P is None:
                levels, variances = model.noncausal(level, s), None
            elif P.stride(0) == 0:  # one covariance sequence shared by the batch (no mask)
                levels = model.noncausal(level, s)
                shared = model.noncausal(level_variances(P[:1, :length]).to(level.dtype), s)
                variances = shared.expand(len(rows), -1, -1)
            else:  # the variances beside the levels through one call
                level_var = level_variances(P.index_select(0, index)[:, :length]).to(level.dtype)
                both = model.noncausal(torch.cat([level, level_var], dim=-1), s)
                levels, variances = both[..., :k], both[..., k:]
            level_rows = output_map(levels).unbind(0)  # views, in one call
            variance_rows = None if variances is None else variances.unbind(0)
            for j, b in enumerate(rows):
                per_video[b] = (level_rows[j], None if variance_rows is None else variance_rows[j])
        results.append([r for r in per_video if r is not None])
    return results


def to_model_device(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A host tensor on the device of ``like`` (floating point: in its dtype), through pinned memory and a
    non-blocking copy when that is a GPU."""
    if tensor.is_floating_point():
        tensor = tensor.to(like.dtype)
    if like.device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(like.device, non_blocking=True)


def _evaluation_batches(videos: list[Video]) -> Iterator[list[Video]]:
    batch: list[Video] = []
    frames = 0
    for video in videos:
        if batch and frames + video.num_frames > EVALUATION_BATCH_FRAMES:
            yield batch
            batch, frames = [], 0
        batch.append(video)
        frames += video.num_frames
    if batch:
        yield batch


def evaluate_seeds(
    model: AffectModel,
    transform: FeatureTransform | None,
    videos: list[Video],
    seeds: list[int] | None = None,
    *,
    workers: Workers | None = None,
) -> list[dict[str, dict[str, float]]]:
    """The one dev metric: per seed in ``seeds`` (default all), AVEC protocol metrics per affect dimension,
    {dimension: {ccc, rmse, pcc}}, per video then averaged over the videos.

    Videos without labels for a dimension (or whose labels are all missing) are left out of that dimension's average;
    unlabelled frames are left out of each video's metrics. workers: data-parallel workers, each evaluating its shard;
    the per-video metrics are gathered (in video order) and averaged over every worker's videos.
    """
    chosen = list(range(model.seeds)) if seeds is None else seeds
    dims = model.config.affect_dimensions
    rows: list[dict[str, list[tuple[str, dict[str, float]]]]] = [{d: [] for d in dims} for _ in chosen]
    labelled = [v for v in videos if v.labelled and v.num_frames > 0]
    fault: str | None = None
    try:
        for batch in _evaluation_batches(labelled):
            xs = [model_input(transform, v.features) for v in batch]
            names = [f"evaluation: video {v.video_id!r}" for v in batch]
            outputs = forward_padded(model, xs, chosen, names=names)
            for per_seed, predictions in zip(rows, outputs, strict=True):
                for video, name, (levels, _) in zip(batch, names, predictions, strict=True):
                    for j, dim in enumerate(dims):
                        gold = video.labels(dim)
                        if gold is not None and np.isfinite(gold).any():
                            per_seed[dim].append((video.video_id, video_metrics(levels[:, j], gold, name)))
    except AffectError as exc:
        if workers is None:
            raise
        fault = str(exc)  # raised on every worker below, none left waiting in the gather
    if workers is not None:
        gathered, faults = zip(*workers.gather((rows, fault)), strict=True)
        fault = next((f for f in faults if f is not None), None)
        if fault is not None:
            raise AffectError(fault)
        rows = [
            {d: sorted((r for part in gathered for r in part[i][d]), key=lambda r: natural_key(r[0])) for d in dims}
            for i in range(len(chosen))
        ]
    return [{dim: average_over_sequences([m for _, m in per_dim[dim]]) for dim in dims} for per_dim in rows]


def video_metrics(levels: np.ndarray, gold: np.ndarray, name: str) -> dict[str, float]:
    """:func:`affect_core.metrics.sequence_metrics` of one video's predicted track against its labels; a prediction
    that is not finite on a labelled frame is an AffectError naming the video (``name``) and the frame, never a
    metric computed without it (an early stopping steered by a silent 0)."""
    bad = ~np.isfinite(levels) & np.isfinite(gold)
    if bad.any():
        raise nonfinite_error(name, int(np.argmax(bad)))
    return sequence_metrics(levels, gold)


def evaluate_videos(
    model: AffectModel, transform: FeatureTransform | None, videos: list[Video]
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_seeds` of a one-seed model: {dimension: {ccc, rmse, pcc}}."""
    return evaluate_seeds(model, transform, videos, [0])[0]
