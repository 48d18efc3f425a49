"""Running a trained model over whole videos: the one prediction path used by evaluation, training and scoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from affect_core.data.records import Video
from affect_core.features import FeatureTransform
from affect_core.metrics import average_over_sequences, sequence_metrics
from affect_core.model import AffectModel


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
