"""Feature transform fitted on the train split only and saved inside the model artifact.

Steps, in order: z-score standardisation, optional PCA keeping a share of the variance (paper: 99%), optional centred
window mean+std pooling (paper: arousal 150 frames, valence 100). Frames without a face (NaN rows) stay NaN through
standardisation and PCA; pooling averages over the frames of the window that have a face, and a window with none stays
NaN. Before all of them, a model may read only some of the dataset's feature columns (``FeatureConfig.columns``: a
model of one affect dimension reads that dimension's version of per-dimension feature sets). Scoring applies exactly
the saved transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affect_core.config import FeatureConfig
from affect_core.errors import AffectError


@dataclass
class FeatureTransform:
    """A fitted transform. mean, scale: (d,); components: (d, p) or None; pooling_window: frames (0 = none);
    columns: (d,) int64 indices of the raw feature columns read, or None for all of them."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray | None
    pooling_window: int
    columns: np.ndarray | None = None

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def output_dim(self) -> int:
        width = self.input_dim if self.components is None else int(self.components.shape[1])
        return 2 * width if self.pooling_window > 0 else width

    def apply(self, features: np.ndarray) -> np.ndarray:
        """features: (T, D) float with NaN rows (D = d, or the dataset's width when ``columns`` selects d of them)
        -> (T, output_dim) float32 with NaN rows where no face remains."""
        if self.columns is not None and features.ndim == 2 and features.shape[1] > int(self.columns.max()):
            features = features[:, self.columns]
        if features.ndim != 2 or features.shape[1] != self.input_dim:
            raise AffectError(
                f"feature transform: expected features of shape (frames, {self.input_dim}), got {features.shape}"
            )
        x = features.astype(np.float64)
        np.subtract(x, self.mean, out=x)
        np.divide(x, self.scale, out=x)
        if self.components is not None:
            x = x @ self.components
        if self.pooling_window > 0:
            x = window_mean_std(x, self.pooling_window)
        return x.astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "mean": self.mean.astype(np.float64),
            "scale": self.scale.astype(np.float64),
            "pooling_window": np.array([self.pooling_window], dtype=np.int64),
        }
        if self.components is not None:
            arrays["components"] = self.components.astype(np.float64)
        if self.columns is not None:
            arrays["columns"] = self.columns.astype(np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureTransform:
        try:
            return cls(
                mean=np.asarray(arrays["mean"], dtype=np.float64),
                scale=np.asarray(arrays["scale"], dtype=np.float64),
                components=None if "components" not in arrays else np.asarray(arrays["components"], np.float64),
                pooling_window=int(np.asarray(arrays["pooling_window"])[0]),
                columns=None if "columns" not in arrays else np.asarray(arrays["columns"], np.int64),
            )
        except KeyError as exc:
            raise AffectError(f"feature transform: missing array {exc} in the model artifact") from None


@dataclass
class FeatureStatistics:
    """What the feature transform is fitted from, summable over shards of the train split (data-parallel workers):
    the number of frames with a face, their mean (d,), and the scatter matrix about that mean (d, d)."""

    count: int
    mean: np.ndarray
    scatter: np.ndarray

    def merged(self, other: FeatureStatistics) -> FeatureStatistics:
        """The statistics of both shards together (Chan et al.'s pairwise update, exact in exact arithmetic)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / count)
        return FeatureStatistics(count, mean, scatter)


def selected_columns(width: int, columns: list[int] | None) -> np.ndarray | None:
    """The checked column indices a model reads out of ``width`` feature columns (None: all of them)."""
    if columns is None:
        return None
    chosen = np.asarray(columns, dtype=np.int64)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= width:
        raise AffectError(
            f"feature transform: columns must index the {width} feature columns, got "
            f"{chosen.size} column(s) up to {int(chosen.max()) if chosen.size else 'none'}"
        )
    return chosen


def feature_statistics(train_features: list[np.ndarray], columns: list[int] | None = None) -> FeatureStatistics:
    """The statistics of the frames with a face of some training videos. train_features: per video (T, D); only the
    columns ``columns`` (all when None) are read."""
    if not train_features:
        width = 0 if columns is None else len(columns)
        return FeatureStatistics(0, np.zeros(width), np.zeros((width, width)))
    stacked = np.concatenate([np.asarray(f, dtype=np.float64) for f in train_features])
    chosen = selected_columns(stacked.shape[1], columns)
    if chosen is not None:
        stacked = stacked[:, chosen]
    stacked = stacked[np.isfinite(stacked).all(axis=1)]
    if len(stacked) == 0:
        width = stacked.shape[1]
        return FeatureStatistics(0, np.zeros(width), np.zeros((width, width)))
    mean = stacked.mean(axis=0)
    centred = stacked - mean
    return FeatureStatistics(len(stacked), mean, centred.T @ centred)


def fit_feature_transform(train_features: list[np.ndarray], config: FeatureConfig) -> FeatureTransform:
    """Fit on the frames with a face of the training videos. train_features: per video (T, D), NaN rows allowed;
    only the columns ``config.columns`` (all when None) are read."""
    if not train_features:
        raise AffectError("feature transform: the train split has no videos to fit on")
    return transform_from_statistics(feature_statistics(train_features, config.columns), config)


def transform_from_statistics(stats: FeatureStatistics, config: FeatureConfig) -> FeatureTransform:
    """The transform of :func:`fit_feature_transform` from (summed) statistics: z-score from the mean and the
    population variance; PCA from the eigenvectors of the standardised scatter matrix, largest first, each signed so
    that its largest loading is positive (a fixed choice, so every worker and every run gets the same components)."""
    if stats.count < 2:
        raise AffectError("feature transform: the train split has fewer than 2 frames with a face")
    mean = stats.mean
    scale = np.sqrt(np.maximum(np.diag(stats.scatter) / stats.count, 0.0))
    scale[scale < 1e-8] = 1.0
    components = None
    if config.pca_share > 0:
        if not 0 < config.pca_share <= 1:
            raise AffectError(f"features: pca_share must lie in (0, 1], got {config.pca_share}")
        standardised = stats.scatter / np.outer(scale, scale)
        eigenvalues, vectors = np.linalg.eigh(standardised)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, vectors = np.maximum(eigenvalues[order], 0.0), vectors[:, order]
        share = np.cumsum(eigenvalues) / np.sum(eigenvalues)
        keep = int(np.searchsorted(share, config.pca_share - 1e-12) + 1)
        components = vectors[:, :keep]
        signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(keep)])
        components = components * np.where(signs == 0, 1.0, signs)
    columns = None if config.columns is None else np.asarray(config.columns, dtype=np.int64)
    return FeatureTransform(mean, scale, components, int(config.pooling_window), columns)


def window_mean_std(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving mean and standard deviation over ``window`` frames, ignoring NaN rows.

    x: (T, p) -> (T, 2p) = [mean, std]. Cumulative sums keep it O(T p) whatever the window.
    """
    t = x.shape[0]
    valid = np.isfinite(x).all(axis=1)
    filled = np.where(valid[:, None], x, 0.0)
    zero = np.zeros((1, x.shape[1]))
    c1 = np.vstack([zero, np.cumsum(filled, axis=0)])
    c2 = np.vstack([zero, np.cumsum(filled**2, axis=0)])
    cn = np.concatenate([[0], np.cumsum(valid)])
    lo = np.clip(np.arange(t) - window // 2, 0, t)
    hi = np.clip(np.arange(t) - window // 2 + window, 0, t)
    n = (cn[hi] - cn[lo]).astype(np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (c1[hi] - c1[lo]) / n
        var = np.maximum((c2[hi] - c2[lo]) / n - mean**2, 0.0)
    out = np.hstack([mean, np.sqrt(var)])
    out[n[:, 0] == 0] = np.nan
    return out
