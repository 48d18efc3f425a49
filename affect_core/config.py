"""Model and training configuration: one place for the defaults, readable from and writable to YAML/JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from affect_core.errors import AffectError

if TYPE_CHECKING:
    from affect_core.storage import Location

MODELS = ("baseline", "lstm-kf", "lstm-ekf")
ALIGNS = ("none", "manual", "adaptive")
DIMENSIONS = ("arousal", "valence", "joint")
TARGETS = ("gold", "raters")
OBSERVATION_NOISES = ("fixed", "learned")


@dataclass
class ModelConfig:
    """Architecture of one LSTM-BF-AA model (paper section III).

    dimension: "arousal" or "valence" (one affect dimension, state n = 3) or "joint" (both, n = 6; valence first).
    window: the alignment half-width D in frames; sigma2_init the initial Gaussian variance (frames^2).
    manual_shift: the manual-alignment delay in frames; None = grid search on the train split.
    smooth_sigma: the baseline's fixed Gaussian smoothing width in frames.
    raters: empty to train on the gold standard (the default); else the raters whose own traces train one adaptive
        alignment each (``affect train --targets raters``), in label order, as the dataset names them
        (``Video.ratings`` keys without the dimension).
    observation_noise: "fixed" (the paper's one learned R = diag(softplus(r)) for every frame) or "learned" (the
        front-end also emits a per-frame offset u_t and frame t's R_t = diag(softplus(r + u_t)): the filter weighs
        each frame by how well it is seen). Bundles written before the option load as "fixed".
    """

    model: str = "lstm-ekf"
    align: str = "adaptive"
    dimension: str = "arousal"
    input_dim: int = 0
    hidden_sizes: tuple[int, ...] = (29, 16)
    lstm_size: int = 16
    fps: float = 25.0
    window: int = 100
    sigma2_init: float = 25.0
    mu_init_frames: float = 0.0
    manual_shift: int | None = None
    smooth_sigma: float = 4.0
    q_init: float = 1e-2
    r_init: float = 1e-2
    p0: float = 1.0
    filter_method: str = "auto"
    raters: tuple[str, ...] = ()
    observation_noise: str = "fixed"

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        self.raters = tuple(str(r) for r in self.raters)
        if self.raters and self.align != "adaptive":
            raise AffectError(
                f"model config: per-rater targets learn one adaptive alignment per rater; got align={self.align!r}, "
                "expected align=adaptive"
            )
        check_choice("model", self.model, MODELS)
        check_choice("align", self.align, ALIGNS)
        check_choice("dimension", self.dimension, DIMENSIONS)
        check_choice("observation_noise", self.observation_noise, OBSERVATION_NOISES)
        if self.observation_noise == "learned" and self.model == "baseline":
            raise AffectError(
                "model config: observation_noise=learned sets a filter's per-frame noise; the baseline has no filter "
                "(use model lstm-kf or lstm-ekf, or observation_noise fixed)"
            )
        if self.window < 0:
            raise AffectError(f"model config: window must be >= 0 frames, got {self.window}")

    @property
    def affect_dimensions(self) -> tuple[str, ...]:
        """The label tracks this model predicts, in state order."""
        return ("valence", "arousal") if self.dimension == "joint" else (self.dimension,)

    @property
    def num_dims(self) -> int:
        return len(self.affect_dimensions)


@dataclass
class FeatureConfig:
    """Feature transform fitted on the train split: z-score, optional PCA, optional mean+std pooling.

    pca_share: keep the principal components explaining this share of variance (0 = no PCA; paper 0.99).
    pooling_window: frames of the centred mean+std pooling window (0 = none; paper arousal 150, valence 100). Leave
    it 0 for a dataset whose features come pooled (``affect info``: pooled, e.g. the AVEC2016 features).
    columns: indices of the dataset's feature columns the model reads (None = all); training sets it from the
    dataset's per-dimension feature sets (``Corpus.dimension_columns``).
    """

    pca_share: float = 0.0
    pooling_window: int = 0
    columns: list[int] | None = None


@dataclass
class TrainConfig:
    """Optimisation: Adam with its own learning rate for the alignment parameters (docs/architecture.md,
    "Conventions").

    window_frames: None for full-length BPTT over whole sequences, else truncated windows of that many frames with
    ``batch_size`` windows per step.
    targets: "gold" trains on the gold standard (the default); "raters" on each rater's own trace, with one adaptive
        alignment per rater (the dataset must hold per-rater traces, e.g. AVEC2016's ratings_individual).
    """

    lr: float = 1e-3
    lr_align: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    lambda1: float = 0.25
    lambda2: float = 0.25
    max_epochs: int = 100
    patience: int = 15
    window_frames: int | None = None
    batch_size: int = 8
    grad_clip: float = 5.0
    seed: int = 0
    eval_every: int = 1
    targets: str = "gold"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        check_choice("targets", self.targets, TARGETS)
        # Checked here so a run config file with a nonsensical value fails at once with one line, not epochs later.
        for name in ("max_epochs", "patience", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise AffectError(f"train config: {name} must be an integer >= 1, got {value!r}")
        window = self.window_frames
        if window is not None and (isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 0):
            raise AffectError(
                f"train config: window_frames must be null or an integer >= 0 (0: whole sequences), got {window!r}"
            )
        for name in ("lr", "lr_align"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
                raise AffectError(f"train config: {name} must be a finite number >= 0, got {value!r}")


@dataclass
class RunConfig:
    """Everything ``affect train --config FILE`` accepts: model, features and training sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["model"]["observation_noise"] == "fixed":
            # Written only when learned: a fixed-noise configuration (bundle.json, a bundle's model id, a best config)
            # reads as it did before the option, and reads back as fixed.
            del data["model"]["observation_noise"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> RunConfig:
        if not isinstance(data, dict):
            raise AffectError(f"{where}: expected a mapping with sections model, features, train")
        unknown = set(data) - {"model", "features", "train"}
        if unknown:
            raise AffectError(f"{where}: unknown section(s) {sorted(unknown)}; expected model, features, train")
        return cls(
            model=_build(ModelConfig, data.get("model", {}), f"{where}: model"),
            features=_build(FeatureConfig, data.get("features", {}), f"{where}: features"),
            train=_build(TrainConfig, data.get("train", {}), f"{where}: train"),
        )

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, *, where: str = "config") -> RunConfig:
        import yaml

        try:
            data = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as exc:
            raise AffectError(f"{where}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data or {}, where=where)


def load_run_config(
    url: str | os.PathLike[str] | Location | None,
    *,
    storage_options: dict[str, Any] | None = None,
    model: str | None = None,
    align: str | None = None,
    epochs: int | None = None,
    window_frames: int | None = None,
    targets: str | None = None,
    observation_noise: str | None = None,
) -> RunConfig:
    """The run configuration of a YAML/JSON file (e.g. ``best_config.yaml`` of ``affect tune``), or the defaults when
    ``url`` is None, with the flags that were given on top (window_frames 0 = whole sequences)."""
    from affect_core.storage import read_bytes, resolve

    if url:
        loc = resolve(url, storage_options)
        try:
            text = read_bytes(loc.fs, loc.path).decode("utf-8")
        except FileNotFoundError:
            raise AffectError(f"{loc.display()}: config file not found") from None
        except UnicodeDecodeError:
            raise AffectError(f"{loc.display()}: config file is not UTF-8 text") from None
        config = RunConfig.from_text(text, where=loc.display())
    else:
        config = RunConfig()
    if model is not None:
        config.model.model = model
    if align is not None:
        config.model.align = align
    if observation_noise is not None:
        config.model.observation_noise = observation_noise
    if epochs is not None:
        config.train.max_epochs = int(epochs)
    if window_frames is not None:
        config.train.window_frames = int(window_frames) or None
    if targets is not None:
        config.train.targets = targets
        config.train.__post_init__()
    config.model.__post_init__()
    return config


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AffectError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _build(kind: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise AffectError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise AffectError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        raise AffectError(f"{where}: {exc}") from None
    except AffectError as exc:  # a value out of range: name the file, the message names the key
        raise AffectError(f"{where.rsplit(': ', 1)[0]}: {exc}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_json(config: Any) -> str:
    """A dataclass config as canonical JSON (sorted keys), e.g. for artifacts and hashes."""
    return json.dumps(_plain(dataclasses.asdict(config)), sort_keys=True)
