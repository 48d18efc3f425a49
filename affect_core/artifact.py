"""Model artifacts: a bundle of trained models (one per affect dimension, or one joint model) that ``score`` takes.

Layout of MODEL_URL (any fsspec URL):

    bundle.json             format tag, feature set and names, fps, and per model: name, config, metrics, file and
                            (bundles trained since calibration) its calibration per affect dimension
    <name>.safetensors      the model's weights ("model.*") and its fitted feature transform ("transform.*")

Weights are safetensors and the rest is JSON: loading never executes pickled code. ``bundle.json`` is written last, so
a bundle is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from affect_core.calibration import Calibration
from affect_core.config import RunConfig
from affect_core.errors import AffectError
from affect_core.features import FeatureTransform
from affect_core.filters.base import GAP_PARAMETERS
from affect_core.inference import Prediction, predict_features
from affect_core.model import AffectModel
from affect_core.storage import Where, read_bytes, resolve, write_bytes_atomic

BUNDLE_FORMAT = "affect-model-bundle/1"


@dataclass
class TrainedModel:
    """One trained model with its feature transform, configuration and metrics.

    calibration: per affect dimension, the map from the filter's level variance to the label's
    (:mod:`affect_core.calibration`), fitted on the dev split after training; None for a bundle from before
    calibration, whose predictions carry the filter's uncalibrated variance."""

    name: str
    model: AffectModel
    transform: FeatureTransform
    config: RunConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Calibration] | None = None

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.config.model.affect_dimensions

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None and all(d in self.calibration for d in self.dimensions)

    def tracks(self, prediction: Prediction) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{dimension: (level (T,), variance (T,))} of one video's prediction: the variance of the label given the
        video when the model is calibrated, else the filter's level variance. The one place a prediction's variance
        is made (scoring, the report, :meth:`ModelBundle.predict`)."""
        out = {}
        for dim in self.dimensions:
            level, variance = prediction.track(dim)
            if self.calibration is not None and dim in self.calibration:
                variance = self.calibration[dim].apply(variance)
            out[dim] = (level, variance)
        return out


@dataclass
class ModelBundle:
    """The models that together predict arousal and valence (either may be missing) for one feature space."""

    models: list[TrainedModel]
    feature_names: list[str]
    feature_set: str
    fps: float
    _model_id: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(d for m in self.models for d in m.dimensions)

    @property
    def calibrated(self) -> bool:
        """Whether every model's predictions carry a calibrated variance (of the label, not the filter's state)."""
        return all(m.calibrated for m in self.models)

    @property
    def model_id(self) -> str:
        """``<variant>@<hash>``: the variant readable, then SHA-256 (first 16 hex digits) over every model's weights,
        fitted feature transform and configuration, and the bundle's feature space. Two trainings of one variant
        differ; the same bundle saved and loaded again keeps its id."""
        if self._model_id is None:
            variant = "+".join(f"{m.name}:{m.config.model.model}-{m.config.model.align}" for m in self.models)
            self._model_id = f"{variant}@{self._content_digest()[:16]}"
        return self._model_id

    def _content_digest(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([self.feature_set, list(self.feature_names), float(self.fps)]).encode())
        for trained in self.models:
            digest.update(json.dumps([trained.name, trained.config.to_dict()], sort_keys=True, default=str).encode())
            if trained.calibration is not None:  # only then: a bundle from before calibration keeps its id
                calibration = {
                    # the variance without a face only where fitted: a bundle calibrated before it keeps its id
                    d: [c.scale, c.noise] + ([] if c.settled is None else [c.settled, c.faceless, c.spread])
                    for d, c in sorted(trained.calibration.items())
                }
                digest.update(json.dumps(calibration).encode())
            arrays = {f"model.{k}": v.detach().cpu().numpy() for k, v in trained.model.state_dict().items()}
            arrays.update({f"transform.{k}": np.asarray(v) for k, v in trained.transform.to_arrays().items()})
            for key in sorted(arrays):
                array = np.ascontiguousarray(arrays[key])
                digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
                digest.update(array.tobytes())
        return digest.hexdigest()

    def predict(
        self, features: np.ndarray, *, chunk_frames: int | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """features: (T, d) raw features of one video -> {dimension: (level (T,), variance (T,))}.

        chunk_frames: a longer video streams through each model in chunks of this many frames (bounded memory).
        """
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise AffectError(
                f"model bundle: expects {len(self.feature_names)} features of set {self.feature_set!r}, "
                f"got an array of shape {features.shape}"
            )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for trained in self.models:
            pred: Prediction = predict_features(trained.model, trained.transform, features, chunk_frames=chunk_frames)
            out.update(trained.tracks(pred))
        return out


def save_bundle(bundle: ModelBundle, url: Where, storage_options: dict[str, Any] | None = None) -> None:
    """Write the bundle under ``url`` (weights first, ``bundle.json`` last); a URL is resolved here, a Location was
    resolved before."""
    loc = resolve(url, storage_options)
    entries = []
    for trained in bundle.models:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
        for key, array in trained.transform.to_arrays().items():
            tensors[f"transform.{key}"] = torch.from_numpy(np.ascontiguousarray(array))
        filename = f"{trained.name}.safetensors"
        write_bytes_atomic(loc.fs, loc.join(filename).path, save_safetensors(tensors))
        entry = {"name": trained.name, "file": filename, "config": trained.config.to_dict(), "metrics": trained.metrics}
        if trained.calibration is not None:
            entry["calibration"] = {dim: c.to_dict() for dim, c in trained.calibration.items()}
        entries.append(entry)
    manifest = {
        "format": BUNDLE_FORMAT,
        "feature_set": bundle.feature_set,
        "feature_names": list(bundle.feature_names),
        "fps": bundle.fps,
        "models": entries,
    }
    write_bytes_atomic(loc.fs, loc.join("bundle.json").path, json.dumps(manifest, indent=2).encode())


_LEGACY_FRONTEND = {"head.weight": "head_weight", "head.bias": "head_bias"} | {
    f"lstm.{name}_l0": f"lstm_{name}" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
}


def one_seed_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-seed model's state dict; weights of bundles from before the seed axis (keys ``frontend.head.weight``,
    ``filter.*``, ``alignment.*``) are renamed and given their seed dimension of 1."""
    if "frontend.head.weight" not in state:
        return state
    upgraded = {}
    for key, value in state.items():
        kind, _, rest = key.partition(".")
        if kind == "frontend":
            if rest.startswith("feed_forward."):
                _, index, leaf = rest.split(".")
                rest = f"ff{int(index) // 2}_{leaf}"
            upgraded[f"frontend.{_LEGACY_FRONTEND.get(rest, rest)}"] = value.unsqueeze(0)
        elif kind in ("filter", "alignment"):
            upgraded[f"{kind}s.0.{rest}"] = value
        else:
            upgraded[key] = value
    return upgraded


def load_bundle(url: Where, storage_options: dict[str, Any] | None = None, device: str = "cpu") -> ModelBundle:
    """Read a bundle written by :func:`save_bundle` (a URL is resolved here, a Location was resolved before);
    refuses anything else with an AffectError."""
    loc = resolve(url, storage_options)
    where = loc.display("bundle.json")
    try:
        manifest = json.loads(read_bytes(loc.fs, loc.join("bundle.json").path))
    except FileNotFoundError:
        raise AffectError(f"{where}: no model bundle here (bundle.json missing)") from None
    except (ValueError, UnicodeDecodeError):
        raise AffectError(f"{where}: not valid JSON; expected an affect model bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise AffectError(f"{where}: format is not {BUNDLE_FORMAT!r}")
    models = []
    for entry in manifest.get("models", []):
        file_where = loc.display(str(entry.get("file")))
        name = str(entry.get("name", ""))
        if not name or "/" in name or ".." in name or entry.get("file") != f"{name}.safetensors":
            raise AffectError(f"{where}: model entry {name!r} has an invalid name or file")
        config = RunConfig.from_dict(entry.get("config", {}), where=f"{where}: model {name}")
        try:
            tensors = load_safetensors(read_bytes(loc.fs, loc.join(entry["file"]).path))
        except FileNotFoundError:
            raise AffectError(f"{file_where}: missing weights file of model {name!r}") from None
        except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not safetensors
            raise AffectError(f"{file_where}: not a safetensors weights file ({type(exc).__name__})") from None
        model = AffectModel(config.model)
        state = one_seed_state({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        # Bundles from before the filters' gap step lack its parameters: they keep their initial values.
        state.update(
            (key, value)
            for key, value in model.state_dict().items()
            if key.rpartition(".")[2] in GAP_PARAMETERS and key not in state
        )
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise AffectError(f"{file_where}: weights do not fit the model config ({first})") from None
        transform = FeatureTransform.from_arrays(
            {k[len("transform.") :]: v.numpy() for k, v in tensors.items() if k.startswith("transform.")}
        )
        model.to(device).eval()
        models.append(
            TrainedModel(name, model, transform, config, entry.get("metrics", {}), _calibration(entry, where, name))
        )
    if not models:
        raise AffectError(f"{where}: the bundle holds no model")
    return ModelBundle(
        models=models,
        feature_names=list(manifest.get("feature_names", [])),
        feature_set=str(manifest.get("feature_set", "")),
        fps=float(manifest.get("fps", 0.0)),
    )


def _calibration(entry: dict[str, Any], where: str, name: str) -> dict[str, Calibration] | None:
    """A model entry's calibration per affect dimension; None when the bundle has none (written before calibration:
    its predictions carry the filter's uncalibrated variance)."""
    data = entry.get("calibration")
    if data is None:
        return None
    if not isinstance(data, dict):
        raise AffectError(f"{where}: model {name!r}: calibration must be an object per affect dimension")
    return {
        str(dim): Calibration.from_dict(value, where=f"{where}: model {name!r} calibration of {dim}")
        for dim, value in data.items()
    }
