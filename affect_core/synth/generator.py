"""Generator of RECOLA-shaped corpora with a known latent affect, a planted annotation lag and missing faces.

Per video (all videos share one fixed feature mapping, so a model trained on some videos transfers to others):

- Latent affect. Two noise-driven, damped second-order oscillators (one per dimension, stationary unit
  variance, period ``latent_period_s``) ride on a slowly switching mean (a new target every ``regime_s``
  seconds on average, approached with a ``regime_tau_s`` time constant). Valence is
  ``tanh(gain * (x_v + m_v))``; arousal is ``tanh(gain * (x_a + m_a + coupling * (valence^2 - 1/3)))``, so
  arousal rises with the intensity of valence. Both stay in (-1, 1) and are smooth.
- Features. Each feature set ("appearance", "geometric") has its own fixed random mapping of the current
  latent state: a basis ``[a, v, a*v, a^2, v^2, sin(pi a), sin(pi v)]`` projected, pushed through tanh,
  scaled and offset per feature, plus white noise (``feature_noise``, relative to the signal) and a small
  per-video offset (a different subject). A share ``1 - informative_share`` of the features is noise only.
  Features depend on the current latent only, so a causal model seeing features up to frame t can estimate
  the latent at t.
- Missing faces. ``round(no_face_share * frames)`` frames per video, in contiguous runs of about
  ``no_face_run_s`` seconds at random places; every feature of such a frame is NaN.
- Degraded frames (off unless ``degraded_share`` > 0): ``round(degraded_share * frames)`` frames per video, in runs
  of about ``degraded_run_s`` seconds at random places, whose features carry white noise of standard deviation
  ``degraded_noise`` (relative to the signal, as ``feature_noise``) instead of ``feature_noise``: a face seen badly
  (blur, occlusion, a turned head). They come from a random stream of their own, so the rest of a corpus is the
  same with or without them; ``SyntheticCorpus.degraded`` says which frames they are.
- Gold standard. ``label_t = latent_{t - L}`` with ``L = round(lag_s * fps)`` (the first value replicated at
  the start), plus smooth annotator noise (AR(1), time constant ``label_noise_tau_s``, standard deviation
  ``label_noise``), clipped to [-1, 1]. Test videos are unlabelled unless ``test_labels``.
- Raters (``raters`` > 0, as in RECOLA's ratings_individual_centred): each rater's trace is the gold standard
  plus that rater's own smooth noise of the same kind, clipped to [-1, 1]; kept as ``Video.ratings``. With
  ``rater_lags_s`` (one lag per rater) each rater instead follows the latent delayed by that rater's own lag, plus
  the rater's noise, and the gold standard of a labelled video is the raters' mean, as RECOLA's: a corpus with
  planted per-rater reaction lags.

Features are rounded to ``feature_decimals`` and labels to ``label_decimals`` decimals in the records
themselves, so that every file layout written from a corpus holds exactly its values (the text layouts print
float32 values in their shortest form).

Every video draws from its own random stream keyed by (seed, split, index), and each feature mapping from one
keyed by (seed, feature set): the same seed gives the same corpus, and ``train_1`` does not change when more
videos are asked for.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from affect_core.data.records import AFFECT_DIMENSIONS, SPLITS, Corpus, Video
from affect_core.data.tables import MAX_ROWS
from affect_core.errors import AffectError

FEATURE_SETS = ("appearance", "geometric")
GENERATOR_NAME = "affect.synth"

# Random stream identifiers: one per kind of draw, so that a new kind of draw leaves the others unchanged.
_STREAM_VIDEO = 1
_STREAM_MAPPING = 2
_STREAM_DEGRADED = 3
_BASIS_SIZE = 7
_FEATURE_NAME = re.compile(r"^(?P<set>.+)_(?P<index>\d+)$")


@dataclass
class SynthConfig:
    """Everything that defines a generated corpus; the defaults give a RECOLA-shaped corpus.

    Sizes: ``videos_per_split`` videos in each of train, dev and test, ``frames`` frames each at ``fps``.
    Times are in seconds; shares in [0, 1); noise levels are standard deviations (features: relative to the
    signal).
    """

    videos_per_split: int = 9
    frames: int = 7501
    fps: float = 25.0
    appearance_dim: int = 84
    geometric_dim: int = 316
    lag_s: float = 2.4
    no_face_share: float = 0.05
    no_face_run_s: float = 1.0
    feature_noise: float = 2.0
    label_noise: float = 0.03
    label_noise_tau_s: float = 0.4
    subject_offset: float = 0.1
    informative_share: float = 0.75
    latent_period_s: float = 8.0
    latent_damping: float = 0.5
    regime_s: float = 30.0
    regime_tau_s: float = 4.0
    regime_amplitude: float = 0.6
    gain: float = 0.9
    coupling: float = 0.5
    test_labels: bool = False
    raters: int = 0
    rater_lags_s: tuple[float, ...] = ()
    feature_decimals: int = 4
    label_decimals: int = 6
    seed: int = 0
    degraded_share: float = 0.0
    degraded_run_s: float = 2.0
    degraded_noise: float = 6.0

    def __post_init__(self) -> None:
        self.rater_lags_s = tuple(float(lag) for lag in self.rater_lags_s)
        self.validate()

    @property
    def lag_frames(self) -> int:
        """The planted annotation lag in frames (labels lag the features by this many frames)."""
        return int(round(self.lag_s * self.fps))

    @property
    def feature_dims(self) -> dict[str, int]:
        """Feature dimension per feature set, in column order; sets of dimension 0 are left out."""
        dims = {"appearance": self.appearance_dim, "geometric": self.geometric_dim}
        return {name: dim for name, dim in dims.items() if dim > 0}

    def validate(self) -> None:
        """Raise ``AffectError`` naming the first setting that is out of range."""
        checks = [
            ("videos_per_split", self.videos_per_split >= 1, "at least 1"),
            ("frames", 2 <= self.frames <= MAX_ROWS, f"at least 2 and at most {MAX_ROWS} (the per-video limit)"),
            ("fps", math.isfinite(self.fps) and self.fps > 0, "a positive number"),
            ("appearance_dim", self.appearance_dim >= 0, "0 or more"),
            ("geometric_dim", self.geometric_dim >= 0, "0 or more"),
            (
                "geometric_dim",
                self.appearance_dim + self.geometric_dim >= 1,
                "at least 1 when appearance_dim is 0",
            ),
            ("lag_s", math.isfinite(self.lag_s) and self.lag_s >= 0, "0 or more seconds"),
            ("no_face_share", 0 <= self.no_face_share < 1, "in [0, 1)"),
            ("no_face_run_s", self.no_face_run_s > 0, "a positive number of seconds"),
            ("feature_noise", self.feature_noise >= 0, "0 or more"),
            ("label_noise", self.label_noise >= 0, "0 or more"),
            ("raters", 0 <= self.raters <= 99, "0 to 99"),
            (
                "rater_lags_s",
                not self.rater_lags_s
                or (
                    len(self.rater_lags_s) == self.raters
                    and all(math.isfinite(lag) and 0 <= lag * self.fps < self.frames for lag in self.rater_lags_s)
                ),
                "empty, or one lag in seconds (0 or more, shorter than a video) per rater",
            ),
            ("label_noise_tau_s", self.label_noise_tau_s > 0, "a positive number of seconds"),
            ("subject_offset", self.subject_offset >= 0, "0 or more"),
            ("informative_share", 0 < self.informative_share <= 1, "in (0, 1]"),
            ("latent_period_s", self.latent_period_s > 0, "a positive number of seconds"),
            ("latent_damping", 0 < self.latent_damping < 1, "in (0, 1)"),
            ("regime_s", self.regime_s > 0, "a positive number of seconds"),
            ("regime_tau_s", self.regime_tau_s > 0, "a positive number of seconds"),
            ("regime_amplitude", self.regime_amplitude >= 0, "0 or more"),
            ("gain", self.gain > 0, "a positive number"),
            ("feature_decimals", 1 <= self.feature_decimals <= 7, "in 1..7"),
            ("label_decimals", 1 <= self.label_decimals <= 7, "in 1..7"),
            ("seed", self.seed >= 0, "0 or more"),
            ("degraded_share", 0 <= self.degraded_share < 1, "in [0, 1)"),
            ("degraded_run_s", self.degraded_run_s > 0, "a positive number of seconds"),
            (
                "degraded_noise",
                self.degraded_share == 0 or self.degraded_noise >= self.feature_noise,
                "at least feature_noise",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise AffectError(f"synth config: {name} = {getattr(self, name)!r} is invalid; expected {expected}")
        if self.lag_frames >= self.frames:
            raise AffectError(
                f"synth config: lag_s = {self.lag_s} is {self.lag_frames} frames, expected fewer than "
                f"frames = {self.frames}"
            )

    def with_(self, **changes: object) -> SynthConfig:
        """A copy with some settings changed (validated)."""
        return replace(self, **changes)


@dataclass
class SyntheticCorpus:
    """A generated corpus together with what generated it.

    corpus: the videos; features are the feature sets concatenated in ``config.feature_dims`` order.
    latent: video id -> the undelayed latent affect, shape ``(T, 2)`` float32, columns ordered as
        ``AFFECT_DIMENSIONS`` (arousal, valence); kept for every video, labelled or not.
    degraded: video id -> bool ``(T,)``, True on the degraded frames (``degraded_share``); empty without them.
    """

    corpus: Corpus
    latent: dict[str, np.ndarray]
    config: SynthConfig
    degraded: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def lag_frames(self) -> int:
        return self.config.lag_frames


def video_ids(config: SynthConfig) -> list[tuple[str, str]]:
    """``(video_id, split)`` of every video, in corpus order: train_1..train_N, dev_1.., test_1.."""
    return [(f"{split}_{i}", split) for split in SPLITS for i in range(1, config.videos_per_split + 1)]


def generate(config: SynthConfig | None = None) -> SyntheticCorpus:
    """Generate a corpus and keep its latent affect (see the module docstring for the model)."""
    config = config or SynthConfig()
    config.validate()
    ids = video_ids(config)
    rngs = [_rng(config.seed, _STREAM_VIDEO, SPLITS.index(split), int(vid.rsplit("_", 1)[1])) for vid, split in ids]
    latents = _latent_affect(config, rngs)
    mappings = {name: _FeatureMapping.draw(config, name, dim) for name, dim in config.feature_dims.items()}
    time_s = np.arange(config.frames, dtype=np.float64) / config.fps

    videos: list[Video] = []
    latent_by_id: dict[str, np.ndarray] = {}
    degraded_by_id: dict[str, np.ndarray] = {}
    for (vid, split), rng, latent in zip(ids, rngs, latents, strict=True):
        face = _face_mask(config, rng)
        blocks = [mapping.features(latent, rng, config) for mapping in mappings.values()]
        if config.degraded_share > 0:
            index = (SPLITS.index(split), int(vid.rsplit("_", 1)[1]))
            degraded_by_id[vid] = _degrade(
                config, blocks, list(mappings.values()), _rng(config.seed, _STREAM_DEGRADED, *index)
            )
        # Round in float64 (then + 0.0 turns -0.0 into 0.0) so that each float32 prints as its short decimal.
        features = (np.round(np.concatenate(blocks, axis=1).astype(np.float64), config.feature_decimals) + 0.0).astype(
            np.float32
        )
        features[~face] = np.nan
        labels = _gold_standard(config, latent, rng)
        labelled = split != "test" or config.test_labels
        ratings = _ratings(config, labels, latent, rng) if labelled and config.raters else None
        if ratings and config.rater_lags_s:  # the gold standard is the raters' mean, as RECOLA's
            labels = np.stack(
                [np.mean([ratings[f"{d}/{r}"] for r in rater_names(config)], axis=0) for d in AFFECT_DIMENSIONS], 1
            )
            labels = (np.round(labels.astype(np.float64), config.label_decimals) + 0.0).astype(np.float32)
        videos.append(
            Video(
                video_id=vid,
                split=split,
                features=features,
                time_s=time_s.copy(),
                fps=config.fps,
                arousal=labels[:, 0].copy() if labelled else None,
                valence=labels[:, 1].copy() if labelled else None,
                ratings=ratings,
            )
        )
        latent_by_id[vid] = latent

    names = [f"{name}_{j}" for name, dim in config.feature_dims.items() for j in range(dim)]
    metadata = {key: str(value) for key, value in asdict(config).items()}
    if config.degraded_share == 0:  # a corpus without degraded frames keeps the metadata it had before the option
        for key in ("degraded_share", "degraded_run_s", "degraded_noise"):
            metadata.pop(key)
    metadata.update(
        generator=GENERATOR_NAME,
        lag_frames=str(config.lag_frames),
        feature_sets=",".join(f"{name}:{dim}" for name, dim in config.feature_dims.items()),
    )
    if config.raters:
        metadata["ratings"] = json.dumps([f"{d}/{r}" for d in AFFECT_DIMENSIONS for r in rater_names(config)])
    corpus = Corpus(
        videos=videos,
        feature_names=names,
        fps=config.fps,
        feature_set="+".join(config.feature_dims),
        source=GENERATOR_NAME,
        metadata=metadata,
    )
    return SyntheticCorpus(corpus=corpus, latent=latent_by_id, config=config, degraded=degraded_by_id)


def generate_corpus(config: SynthConfig | None = None) -> Corpus:
    """Generate a corpus (see the module docstring); ``generate`` also returns the latent affect."""
    return generate(config).corpus


def feature_sets(corpus: Corpus) -> dict[str, slice]:
    """The columns of each feature set, from feature names of the form ``<set>_<index>`` in contiguous blocks.

    A corpus whose names do not follow that form is one set named ``corpus.feature_set``.
    """
    sets: dict[str, slice] = {}
    start = 0
    current: str | None = None
    for column, name in enumerate(corpus.feature_names):
        match = _FEATURE_NAME.match(name)
        if match is None:
            return {corpus.feature_set: slice(0, corpus.feature_dim)}
        if match["set"] != current:
            if current is not None:
                sets[current] = slice(start, column)
            if match["set"] in sets:  # the set is split into several blocks: not a per-set layout
                return {corpus.feature_set: slice(0, corpus.feature_dim)}
            current, start = match["set"], column
    if current is not None:
        sets[current] = slice(start, corpus.feature_dim)
    return sets


def select_feature_set(corpus: Corpus, name: str) -> Corpus:
    """A corpus holding only the columns of one feature set (the arrays are views of the original ones)."""
    sets = feature_sets(corpus)
    if name not in sets:
        raise AffectError(f"corpus: no feature set {name!r}; expected one of {sorted(sets)}")
    columns = sets[name]
    videos = [replace(video, features=video.features[:, columns]) for video in corpus.videos]
    return replace(corpus, videos=videos, feature_names=corpus.feature_names[columns], feature_set=name)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def _latent_affect(config: SynthConfig, rngs: list[np.random.Generator]) -> list[np.ndarray]:
    """Latent (arousal, valence) per video, shape (T, 2); all videos advance together, one frame per step."""
    n, frames, dt = len(rngs), config.frames, 1.0 / config.fps
    omega = 2 * math.pi / config.latent_period_s
    zeta = config.latent_damping
    # x'' = -omega^2 x - 2 zeta omega x' + sigma w: stationary Var(x) = sigma^2 / (4 zeta omega^3), made 1.
    sigma = math.sqrt(4 * zeta * omega**3)
    switch_prob = 1 - math.exp(-dt / config.regime_s)
    relax = 1 - math.exp(-dt / config.regime_tau_s)

    # Draw each video's whole random input from its own stream (shape (n, T, 2) for each draw).
    drive = np.stack([rng.standard_normal((frames, 2)) for rng in rngs])
    switches = np.stack([rng.random(frames) < switch_prob for rng in rngs])
    targets = np.stack([rng.uniform(-1, 1, (frames, 2)) for rng in rngs]) * config.regime_amplitude
    x = np.stack([rng.standard_normal(2) for rng in rngs])
    v = np.stack([rng.standard_normal(2) for rng in rngs]) * omega  # stationary Var(x') = omega^2 Var(x)
    target = targets[:, 0].copy()
    mean = target.copy()

    level = np.empty((n, frames, 2))
    for t in range(frames):
        # Semi-implicit Euler step of the damped oscillator (stable for omega * dt << 1).
        v += dt * (-(omega**2) * x - 2 * zeta * omega * v) + sigma * math.sqrt(dt) * drive[:, t]
        x += dt * v
        target = np.where(switches[:, t, None], targets[:, t], target)
        mean += relax * (target - mean)
        level[:, t] = x * 0.7 + mean

    valence = np.tanh(config.gain * level[..., 1])
    arousal = np.tanh(config.gain * (level[..., 0] + config.coupling * (valence**2 - 1 / 3)))
    latent = np.stack([arousal, valence], axis=-1).astype(np.float32)
    assert latent.shape == (n, frames, len(AFFECT_DIMENSIONS))
    return list(latent)


@dataclass
class _FeatureMapping:
    """A fixed nonlinear map from the latent state to one feature set, shared by all videos of a corpus."""

    weights: np.ndarray  # (basis, dim)
    bias: np.ndarray  # (dim,)
    scale: np.ndarray  # (dim,)
    offset: np.ndarray  # (dim,)

    @classmethod
    def draw(cls, config: SynthConfig, name: str, dim: int) -> _FeatureMapping:
        rng = _rng(config.seed, _STREAM_MAPPING, FEATURE_SETS.index(name) if name in FEATURE_SETS else 99)
        weights = rng.standard_normal((_BASIS_SIZE, dim)) * 0.8
        informative = np.zeros(dim, dtype=bool)
        informative[rng.permutation(dim)[: max(1, int(round(config.informative_share * dim)))]] = True
        weights[:, ~informative] = 0.0
        return cls(
            weights=weights,
            bias=rng.normal(0.0, 0.3, dim),
            scale=np.exp(rng.normal(0.0, 0.5, dim)),
            offset=rng.normal(0.0, 1.0, dim),
        )

    def features(self, latent: np.ndarray, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
        """Features of one video, shape (T, dim) float32, from its latent of shape (T, 2)."""
        a, v = latent[:, 0].astype(np.float64), latent[:, 1].astype(np.float64)
        basis = np.stack([a, v, a * v, a**2 - 1 / 3, v**2 - 1 / 3, np.sin(np.pi * a), np.sin(np.pi * v)], axis=1)
        # float32 from here: numpy's float64 tanh is several times slower, and values are rounded anyway.
        clean = np.tanh((basis @ self.weights + self.bias).astype(np.float32))
        dim = self.weights.shape[1]
        noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(config.feature_noise)
        subject = rng.normal(0.0, config.subject_offset, dim).astype(np.float32)
        return (clean + subject + noise) * self.scale.astype(np.float32) + self.offset.astype(np.float32)


def _degrade(
    config: SynthConfig, blocks: list[np.ndarray], mappings: list[_FeatureMapping], rng: np.random.Generator
) -> np.ndarray:
    """Raise the feature noise of a video's degraded frames to ``degraded_noise`` (in place, every feature set); returns
    the degraded frames, bool (T,)."""
    degraded = ~_run_mask(config.frames, config.degraded_share, config.degraded_run_s, config.fps, rng)
    # Independent noise adds in variance: feature_noise^2 + extra^2 = degraded_noise^2.
    extra = math.sqrt(config.degraded_noise**2 - config.feature_noise**2)
    for block, mapping in zip(blocks, mappings, strict=True):
        noise = rng.standard_normal((int(degraded.sum()), block.shape[1]), dtype=np.float32) * np.float32(extra)
        block[degraded] += noise * mapping.scale.astype(np.float32)
    return degraded


def _face_mask(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """True where a face was found: exactly round(share * T) missing frames, in runs at random places."""
    return _run_mask(config.frames, config.no_face_share, config.no_face_run_s, config.fps, rng)


def _run_mask(frames: int, share: float, run_s: float, fps: float, rng: np.random.Generator) -> np.ndarray:
    """False on exactly round(share * frames) frames, in runs of about ``run_s`` seconds at random places; True
    elsewhere."""
    missing = int(round(share * frames))
    face = np.ones(frames, dtype=bool)
    if missing == 0:
        return face
    present = frames - missing
    runs = max(1, min(missing, present + 1, int(round(missing / (run_s * fps)))))
    # Split the missing frames into `runs` positive run lengths, and the present frames into runs + 1 gaps of
    # which the inner ones are positive (so that runs never merge).
    cuts = np.sort(rng.choice(np.arange(1, missing), runs - 1, replace=False)) if runs > 1 else np.array([], int)
    run_lengths = np.diff(np.concatenate([[0], cuts, [missing]]))
    spare = present - (runs - 1)
    bars = np.sort(rng.integers(0, spare + 1, runs))
    gaps = np.diff(np.concatenate([[0], bars, [spare]]))
    gaps[1:-1] += 1
    position = 0
    for gap, length in zip(gaps[:-1], run_lengths, strict=True):
        position += int(gap)
        face[position : position + int(length)] = False
        position += int(length)
    return face


def _gold_standard(config: SynthConfig, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels, shape (T, 2): the latent delayed by the lag plus smooth annotator noise, clipped to [-1, 1]."""
    lag = config.lag_frames
    delayed = np.concatenate([np.repeat(latent[:1], lag, axis=0), latent[: len(latent) - lag]])
    # AR(1) noise with the requested stationary standard deviation, as a convolution with its impulse response
    # truncated where it falls below 1e-6; a burn-in of the kernel's length makes the start stationary too.
    phi = math.exp(-1.0 / (config.label_noise_tau_s * config.fps))
    kernel = phi ** np.arange(int(math.ceil(math.log(1e-6) / math.log(phi))) + 1)
    innovations = rng.standard_normal((len(latent) + len(kernel) - 1, 2)) * config.label_noise * math.sqrt(1 - phi**2)
    noise = np.stack([np.convolve(innovations[:, d], kernel, mode="valid") for d in range(2)], axis=1)
    labels = np.clip(delayed.astype(np.float64) + noise, -1.0, 1.0)
    return (np.round(labels, config.label_decimals) + 0.0).astype(np.float32)


def rater_names(config: SynthConfig) -> list[str]:
    """R1, R2, ... (one per rater)."""
    return [f"R{i + 1}" for i in range(config.raters)]


def _ratings(
    config: SynthConfig, labels: np.ndarray, latent: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per-rater traces, "<dimension>/<rater>" -> (T,): the gold standard plus each rater's own smooth noise, or with
    ``rater_lags_s`` the latent delayed by each rater's own lag plus that rater's noise."""
    out: dict[str, np.ndarray] = {}
    for i, rater in enumerate(rater_names(config)):
        if config.rater_lags_s:
            own = _gold_standard(config.with_(lag_s=float(config.rater_lags_s[i])), latent, rng)
            traces = own.astype(np.float64)
        else:
            noise = _gold_standard(config.with_(lag_s=0.0), np.zeros_like(labels), rng).astype(np.float64)
            traces = np.clip(labels.astype(np.float64) + noise, -1.0, 1.0)
        traces = (np.round(traces, config.label_decimals) + 0.0).astype(np.float32)
        for column, dimension in enumerate(AFFECT_DIMENSIONS):
            out[f"{dimension}/{rater}"] = traces[:, column].copy()
    return out
