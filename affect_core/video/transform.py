"""The fitted video feature transform: extraction settings plus the PCA that reduces LGBP-TOP vectors.

Fitted on frames sampled from the train split (AVEC2016: PCA keeping 99% of the variance), stored with the dataset
it produced and copied into model bundles trained on that dataset, so that scoring new videos extracts and reduces
exactly as ingest did. Stored as one safetensors file (arrays ``mean`` (D,) and ``components`` (D, p), float32; the
settings as JSON in the file's metadata): loading never executes pickled code.

Where it lives:

    DATASET_URL/_video_transforms/<content hash>.safetensors   one per dataset version (its content hash)
    MODEL_URL/video_transform.safetensors                      in a model bundle

Names starting with "_" are skipped by dataset readers and table-format maintenance.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from affect_core import storage
from affect_core.errors import AffectError
from affect_core.video.config import VideoConfig

FORMAT = "affect-video-transform/1"
TRANSFORMS_DIR = "_video_transforms"
BUNDLE_FILE = "video_transform.safetensors"
FEATURE_SET = "lgbptop"


@dataclass
class VideoTransform:
    """config: extraction settings; mean: (D,) float32; components: (D, p) float32 orthonormal columns."""

    config: VideoConfig
    mean: np.ndarray
    components: np.ndarray

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def feature_names(self) -> list[str]:
        return [f"{FEATURE_SET}_pc{i}" for i in range(self.output_dim)]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """raw: (N, D) LGBP-TOP rows, NaN rows allowed -> (N, p) float32, NaN rows kept.

        The product runs in torch on one thread (numpy's BLAS threads were 20x slower on one pinned core), so that the
        result does not depend on the machine's thread count: one process and Ray workers give the same bits."""
        x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        with one_thread():
            out = (x - torch.from_numpy(self.mean)) @ torch.from_numpy(np.ascontiguousarray(self.components))
        return out.numpy()

    def to_bytes(self) -> bytes:
        metadata = {"format": FORMAT, "config": json.dumps(self.config.to_dict())}
        arrays = {"mean": np.ascontiguousarray(self.mean, np.float32)}
        arrays["components"] = np.ascontiguousarray(self.components, np.float32)
        return save_safetensors(arrays, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> VideoTransform:
        try:
            arrays = load_safetensors(data)
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not a transform
            raise AffectError(f"{where}: not a video transform file ({type(exc).__name__})") from None
        if metadata.get("format") != FORMAT or "mean" not in arrays or "components" not in arrays:
            raise AffectError(f"{where}: not a video transform file; expected format {FORMAT!r}")
        config = VideoConfig.from_dict(json.loads(metadata["config"]), where)
        mean, components = arrays["mean"], arrays["components"]
        if mean.shape != (config.raw_dim,) or components.ndim != 2 or components.shape[0] != config.raw_dim:
            raise AffectError(f"{where}: arrays do not fit the settings (raw dimension {config.raw_dim})")
        return cls(config, mean, components)


def fit_transform(samples: np.ndarray, config: VideoConfig) -> VideoTransform:
    """samples: (N, D) LGBP-TOP rows of train frames with a face -> the PCA keeping ``config.pca_share`` of the
    variance (at most ``config.max_components`` components).

    The eigenvectors come from the N x N Gram matrix of the centred rows (N is far below D), in float64, on one torch
    thread (a reduction split over threads changes the last bits, and the fit must not depend on where it ran).
    """
    with one_thread():
        return _fit(samples, config)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block (the setting before is restored)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _fit(samples: np.ndarray, config: VideoConfig) -> VideoTransform:
    samples = samples[np.isfinite(samples).all(axis=1)]
    if len(samples) < 2:
        raise AffectError(
            "video features: fewer than 2 train frames with a face to fit the PCA on; expected train videos "
            "showing a frontal face"
        )
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    mean = x.mean(dim=0)
    x = x - mean
    gram = (x @ x.T).to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues = eigenvalues[order].clamp_min(0.0)
    eigenvectors = eigenvectors[:, order]
    total = float(eigenvalues.sum())
    if total <= 0:
        raise AffectError("video features: the sampled train frames do not vary; expected faces that move")
    share = torch.cumsum(eigenvalues, 0) / total
    keep = int(torch.searchsorted(share, torch.tensor([config.pca_share - 1e-12], dtype=share.dtype))[0]) + 1
    keep = max(1, min(keep, config.max_components, int((eigenvalues > total * 1e-12).sum())))
    directions = (x.T.to(torch.float64) @ eigenvectors[:, :keep]) / torch.sqrt(eigenvalues[:keep])
    # Sign convention: the largest entry of each component is positive, so refits of the same data agree.
    signs = torch.sign(directions[directions.abs().argmax(dim=0), torch.arange(keep)])
    directions = directions * torch.where(signs == 0, 1.0, signs)
    return VideoTransform(config, mean.numpy().astype(np.float32), directions.to(torch.float32).numpy())


def save_bundle_transform(transform: VideoTransform, model: storage.Location) -> None:
    """Store ``transform`` in a model bundle (MODEL/video_transform.safetensors)."""
    loc = model
    storage.write_bytes_atomic(loc.fs, loc.join(BUNDLE_FILE).path, transform.to_bytes())


def load_bundle_transform(model_url: storage.Where, storage_options: dict[str, Any] | None = None) -> VideoTransform:
    """The video transform a model bundle carries (``model_url`` resolved here, or a Location resolved before);
    AffectError when the model was not trained on video features."""
    loc = storage.resolve(model_url, storage_options)
    path = loc.join(BUNDLE_FILE).path
    if not storage.exists(loc.fs, path):
        raise AffectError(
            f"{loc.display(BUNDLE_FILE)}: file not found; expected a model trained on a dataset ingested with "
            "--layout video (`affect train` copies the dataset's video transform into the bundle)"
        )
    return VideoTransform.from_bytes(storage.read_bytes(loc.fs, path), loc.display(BUNDLE_FILE))
