"""Calibrated uncertainty: the variance of the label given the video, from the filter's state variance.

The filter's (aligned) level variance ``v_t`` is the model's uncertainty about its own state, not about the label: the
gold standard also carries the annotators' noise, and a trained filter's covariance need not be on the labels' scale.
The variance a prediction carries is therefore

    var_label_t = a * v_t + b,        a >= 0 (scale of the filter's variance), b >= 0 (annotation noise variance),

per affect dimension, fitted after training on the dev split (labels the model was not trained on) in two steps:

1. the shape, how a and b share the variance: by maximising the Gaussian likelihood of the dev labels around the
   predictions, ``label_t ~ N(prediction_t, var_label_t)``;
2. the level, one factor on both: the one whose central 50% and 90% intervals (prediction +- 0.674 / 1.645 sd) come
   closest to holding 50% and 90% of the dev labels (it minimises the larger of the two misses; of equally good
   factors, the one nearest the likelihood's, 1). Residuals are seldom exactly Gaussian (labels clipped to [-1, 1],
   errors that vary from video to video), and the likelihood then sets a variance whose intervals miss their nominal
   coverage on the very frames it was fitted on (measured on generated corpora: the 50% interval held 46-61% of dev
   labels); the intervals are what users read, so they set the level. :func:`gaussian_nll` still reports the
   likelihood.

Step 1 profiles the likelihood: write ``var_label = c * ((1 - w) + w * v / mean(v))`` with c > 0, w in [0, 1]; for a
fixed w the best c is ``mean(r^2 / u)`` (u the bracket, r the residual), so the maximum is a one-dimensional search over
w (a grid, then golden-section refinement): exact, deterministic, and both boundaries (a = 0: the variance says nothing
beyond a constant; b = 0: no annotation noise) are reachable. When v is the same on every dev frame (a linear filter
whose every frame was observed: its covariance converges and does not depend on the data) the likelihood cannot
separate a from b; then the filter's variance is kept as it is (a = 1) and b is the rest of the mean squared error
(or, when the filter's variance alone exceeds it, a shrinks it and b = 0). A model without a filter (the baseline)
has no v: a = 0 and b is the dev mean squared error.

Without a face. Dev data seldom hold the stretches without a face that scoring meets (minutes of an interview or a
classroom against RECOLA's short runs), and where the dev frames all have a face the fit has no evidence about them:
it may set a = 0, and the band would keep its width through a ten-minute stretch; or a > 0, and the line, carried
far beyond the variances it was fitted on, makes the band wider than the labels ever range. Where the face is gone
the model falls back to its gap step's mean (the filter's mean-reverting predict step), so the variance there
tends to the labels' spread around that mean. The calibration therefore moves the variance from the fitted line
towards ``max(spread, a * settled + b)`` (``spread`` the mean squared distance of the dev labels from that mean;
``a * settled + b`` the variance of a frame with a face, ``settled`` the filter's level variance on dev frames with a
face), in proportion to how far the filter's own variance has moved from ``settled`` towards ``faceless``, the
variance a stretch without a face settles at (the stationary solution of the gap step): weight
``clip((v - settled) / (faceless - settled), 0, 1)``. On frames with a face nothing changes; a stretch of a second
moves the band a little, a long one to the labels' spread.

Calibrated intervals are Gaussian: ``prediction +- z * sqrt(var_label)`` with z = 0.674 (50%) and 1.645 (90%).
:func:`interval_coverage` and :func:`gaussian_nll` are the one implementation that evaluation and the report use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from affect_core.errors import AffectError

# Nominal coverages of the central intervals that evaluation reports.
REPORTED_LEVELS = (0.5, 0.9)
# Nominal coverages of the report's reliability plot.
RELIABILITY_LEVELS = tuple(round(0.1 * k, 1) for k in range(1, 10))
# The least variance a calibrated prediction carries (a label resolution of 1e-3 in [-1, 1]): keeps the NLL finite.
MIN_VARIANCE = 1e-6
_GRID = 201


def interval_z(level: float) -> float:
    """The half-width in standard deviations of the central interval holding ``level`` of a Gaussian (0.5 -> 0.674,
    0.9 -> 1.645)."""
    if not 0.0 < level < 1.0:
        raise AffectError(f"calibration: a coverage level must lie in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


@dataclass(frozen=True)
class Calibration:
    """``var_label = scale * var_state + noise`` for one affect dimension, fitted on ``frames`` labelled frames of
    ``split``. coverage50 / coverage90: the calibrated intervals' coverage on those frames.

    Without a face (see the module docstring, "Without a face"): ``settled`` is the filter's level variance on frames
    with a face, ``faceless`` the one a stretch without a face settles at, ``spread`` the mean squared distance of
    the labels from the level the model falls back to there; None (no filter, or calibrations written before them)
    leaves the variance ``scale * var_state + noise`` everywhere."""

    scale: float
    noise: float
    frames: int = 0
    split: str = "dev"
    coverage50: float = float("nan")
    coverage90: float = float("nan")
    settled: float | None = None
    faceless: float | None = None
    spread: float | None = None

    def apply(self, state_variance: np.ndarray) -> np.ndarray:
        """The label's variance for the filter's level variances (any shape); NaN state variance (no filter)
        counts as 0. Returned in the input's float dtype (float32 for anything else)."""
        v = np.asarray(state_variance)
        dtype = v.dtype if np.issubdtype(v.dtype, np.floating) else np.float32
        v = np.clip(np.nan_to_num(v.astype(np.float64), nan=0.0, posinf=np.inf), 0.0, None)
        variance = np.maximum(self.scale * v + self.noise, MIN_VARIANCE)
        if self.settled is not None and self.faceless is not None and self.faceless > self.settled:
            # From the fitted line (the filter's variance settled, a face seen) to the labels' spread around the
            # fallback level (the filter's variance at its faceless level), as far as the filter's own variance has
            # moved between them; never below the variance of a frame with a face.
            seen = self.scale * self.settled + self.noise
            unseen = seen if self.spread is None else max(self.spread, seen)
            lost = np.clip((v - self.settled) / (self.faceless - self.settled), 0.0, 1.0)
            variance = (1.0 - lost) * variance + lost * unseen
        return variance.astype(dtype)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "calibration") -> Calibration:
        """Read what :meth:`to_dict` wrote; refuses anything else with an AffectError naming ``where``."""
        if not isinstance(data, dict):
            raise AffectError(f"{where}: expected an object with scale and noise, got {type(data).__name__}")
        try:
            scale, noise = float(data["scale"]), float(data["noise"])
        except (KeyError, TypeError, ValueError):
            raise AffectError(f"{where}: scale and noise must be numbers >= 0") from None
        if not (math.isfinite(scale) and math.isfinite(noise) and scale >= 0 and noise >= 0):
            raise AffectError(f"{where}: scale and noise must be finite numbers >= 0, got {scale}, {noise}")

        def number(key: str) -> float:
            value = data.get(key)
            return float(value) if isinstance(value, (int, float)) else float("nan")

        def optional(key: str) -> float | None:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise AffectError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
            return float(value)

        return cls(
            scale,
            noise,
            int(data.get("frames") or 0),
            str(data.get("split", "dev")),
            number("coverage50"),
            number("coverage90"),
            *(optional(key) for key in ("settled", "faceless", "spread")),
        )


def fit_calibration(
    state_variance: np.ndarray,
    residual: np.ndarray,
    *,
    split: str = "dev",
    where: str = "calibration",
    faceless: tuple[float, float, float] | None = None,
) -> Calibration:
    """Fit ``var_label = a * var_state + b`` (a, b >= 0) by maximum Gaussian likelihood of the residuals.

    state_variance: (N,) the filter's aligned level variance per labelled frame (NaN everywhere: no filter);
    residual: (N,) label - prediction. Frames where the residual is not finite are left out; a finite residual
    beside a non-finite state variance (some frames without one) is an error. faceless: (settled, faceless,
    spread) of :class:`Calibration` (the variance without a face), or None; the coverages reported are those of the
    variance with it.
    """
    v = np.asarray(state_variance, dtype=np.float64).reshape(-1)
    r = np.asarray(residual, dtype=np.float64).reshape(-1)
    if v.shape != r.shape:
        raise AffectError(f"{where}: {v.size} state variances for {r.size} residuals")
    keep = np.isfinite(r)
    v, r = v[keep], r[keep]
    if r.size == 0:
        raise AffectError(f"{where}: no labelled {split} frame to calibrate on")
    r2 = r * r
    if np.isnan(v).all():  # no filter: a constant variance
        scale, noise = 0.0, float(r2.mean())
    elif not np.isfinite(v).all() or (v < 0).any():
        bad = int(np.flatnonzero(~np.isfinite(v) | (v < 0))[0])
        raise AffectError(f"{where}: the state variance of labelled {split} frame {bad} is {v[bad]}")
    else:
        scale, noise = _fit_scale_noise(v, r2)
    shape = Calibration(max(scale, 0.0), max(noise, 0.0)).apply(v)
    # the level: the factor on the variance whose intervals come closest to their nominal coverage (minimax)
    ratio = np.sort(np.abs(r) / np.sqrt(shape))  # a frame is inside the z-interval of factor k when ratio <= z sqrt(k)
    factors = np.exp(np.linspace(math.log(0.25), math.log(4.0), 1201))
    worst = np.zeros_like(factors)
    for level in REPORTED_LEVELS:
        covered = np.searchsorted(ratio, interval_z(level) * np.sqrt(factors), side="right") / ratio.size
        worst = np.maximum(worst, np.abs(covered - level))
    tied = factors[worst <= worst.min() + 1e-12]
    best = float(tied[int(np.argmin(np.abs(np.log(tied))))])  # of equally good factors, the likelihood's own (1)
    fitted = Calibration(best * max(scale, 0.0), best * max(noise, 0.0), int(r.size), split)
    if faceless is not None and not np.isnan(v).all():
        fitted = replace(fitted, settled=faceless[0], faceless=faceless[1], spread=faceless[2])
    var = fitted.apply(v)
    return replace(
        fitted,
        coverage50=float(np.mean(np.abs(r) <= interval_z(0.5) * np.sqrt(var))),
        coverage90=float(np.mean(np.abs(r) <= interval_z(0.9) * np.sqrt(var))),
    )


def _fit_scale_noise(v: np.ndarray, r2: np.ndarray) -> tuple[float, float]:
    mse = float(r2.mean())
    mean_v = float(v.mean())
    if mean_v <= 0.0 or float(v.std()) <= 1e-6 * mean_v:  # a constant state variance: a and b not separable
        if mean_v <= mse:
            return 1.0, mse - mean_v
        return mse / mean_v if mean_v > 0 else 0.0, 0.0
    shape = v / mean_v

    def profile(w: float) -> tuple[float, float]:
        u = np.maximum((1.0 - w) + w * shape, 1e-12)
        c = max(float(np.mean(r2 / u)), 1e-300)
        return float(np.mean(np.log(u))) + math.log(c), c  # the NLL up to constants, at the best c

    grid = np.linspace(0.0, 1.0, _GRID)
    values = [profile(w)[0] for w in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, _GRID - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):  # golden-section search inside the best grid cell pair
        x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if profile(x1)[0] <= profile(x2)[0]:
            hi = x2
        else:
            lo = x1
    candidates = [grid[best], (lo + hi) / 2.0]
    w = min(candidates, key=lambda x: profile(x)[0])
    c = profile(w)[1]
    return c * w / mean_v, c * (1.0 - w)


def interval_coverage(
    prediction: np.ndarray, variance: np.ndarray, label: np.ndarray, levels: tuple[float, ...] = REPORTED_LEVELS
) -> tuple[np.ndarray, int]:
    """(covered counts per level, frames counted): how many labelled frames lie in the central interval
    ``prediction +- z(level) sd``; frames whose label, prediction or variance is missing are not counted."""
    p, var, g = (np.asarray(x, dtype=np.float64) for x in (prediction, variance, label))
    keep = np.isfinite(p) & np.isfinite(var) & np.isfinite(g) & (var >= 0)
    error = np.abs(g[keep] - p[keep])
    sd = np.sqrt(var[keep])
    counts = np.array([int(np.count_nonzero(error <= interval_z(level) * sd)) for level in levels], dtype=np.int64)
    return counts, int(keep.sum())


def gaussian_nll(prediction: np.ndarray, variance: np.ndarray, label: np.ndarray) -> tuple[float, int]:
    """(sum over frames, frames counted) of the Gaussian negative log-likelihood of the labels,
    ``0.5 * (log(2 pi var) + (label - prediction)^2 / var)``, variance floored at MIN_VARIANCE; frames as in
    :func:`interval_coverage`."""
    p, var, g = (np.asarray(x, dtype=np.float64) for x in (prediction, variance, label))
    keep = np.isfinite(p) & np.isfinite(var) & np.isfinite(g) & (var >= 0)
    s = np.maximum(var[keep], MIN_VARIANCE)
    total = 0.5 * (np.log(2.0 * math.pi * s) + (g[keep] - p[keep]) ** 2 / s)
    return float(total.sum()), int(keep.sum())


def calibrate_model(
    model: Any, transform: Any, videos: list[Any], *, split: str = "dev", workers: Any = None
) -> dict[str, Calibration]:
    """Fit each affect dimension's calibration of a one-seed model (:class:`affect_core.model.AffectModel`) on the
    labelled ``videos`` (the dev split), predicted through the one prediction path
    (:func:`affect_core.inference.forward_padded`), with the variance without a face (the module docstring): the
    filter's level variance settled on frames with a face (the median over the dev frames with one), the stationary
    one of its gap step, and the labels' mean squared distance from the gap step's mean (clamped to the labels'
    range, as the output map does). workers: data-parallel workers, each holding a shard of the videos: every
    worker's frames are gathered, and every worker fits the same calibration. An empty dict when no video has
    labels."""
    from affect_core.inference import EVALUATION_BATCH_FRAMES, forward_padded, model_input
    from affect_core.model import host_finite_rows

    dims = model.config.affect_dimensions
    # per dimension: (state variance, residual) of labelled frames, state variances of frames with a face, and the
    # labels' squared distances from the fallback level
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {d: [] for d in dims}
    labelled = [v for v in videos if v.labelled and v.num_frames > 0]
    fallback = np.zeros(len(dims))
    stationary: np.ndarray | None = None
    if model.filters is not None:
        layer = model.filters.seed_module(0)
        stationary = np.diagonal(layer.stationary_gap_covariance().cpu().numpy())[0::3]
        fallback = np.clip(layer.gap_mean.detach().double().cpu().numpy(), -1.0, 1.0)
    batch: list[Any] = []

    def run(batch: list[Any]) -> None:
        inputs = [model_input(transform, v.features) for v in batch]
        outputs = forward_padded(model, inputs, [0])[0]
        for video, x, (levels, variances) in zip(batch, inputs, outputs, strict=True):
            face = host_finite_rows(x)
            for j, dim in enumerate(dims):
                gold = video.labels(dim)
                if gold is None or not np.isfinite(gold).any():
                    continue
                keep = np.isfinite(gold)
                parts[dim].append(
                    (
                        variances[keep, j].astype(np.float64),
                        (gold[keep] - levels[keep, j]).astype(float),
                        variances[face, j].astype(np.float64),
                        (gold[keep].astype(np.float64) - fallback[j]) ** 2,
                    )
                )

    frames = 0
    for video in labelled:
        if batch and frames + video.num_frames > EVALUATION_BATCH_FRAMES:
            run(batch)
            batch, frames = [], 0
        batch.append(video)
        frames += video.num_frames
    if batch:
        run(batch)
    if workers is not None:
        gathered = workers.gather(parts)
        parts = {d: [p for shard in gathered for p in shard[d]] for d in dims}
    out = {}
    for j, dim in enumerate(dims):
        if parts[dim]:
            variance, residual, seen, spread = (np.concatenate([p[k] for p in parts[dim]]) for k in range(4))
            faceless = None
            if stationary is not None and seen.size and np.isfinite(seen).all():
                faceless = (float(np.median(seen)), float(stationary[j]), float(spread.mean()))
            out[dim] = fit_calibration(
                variance, residual, split=split, where=f"calibration of {dim} on {split}", faceless=faceless
            )
    return out
