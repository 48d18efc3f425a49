"""Reports of a training run: summary.md and PNG plots, readable without the Prefect UI.

Layout written under ``RUN_URL/report/`` (or ``out_url``)::

    summary.md            the paper-style tables of results.parquet (mean and std over seeds, learned lag), the
                          best tuning trials when a tuning run exists, and the plots below
    ablation.png          CCC per variant and dimension, bars = mean over seeds, error bars = std (per split)
    lag.png               the learned lag mu (seconds) per model with its spread over seeds (paper Table IV)
    curves-<video>.png    predicted against gold-standard curves of a dev video with the 90% interval of the variance
                          each prediction carries (calibrated: the label's given the video; it widens where the
                          face is gone, shaded) (like the paper's Figures 3 and 4)
    reliability.png       calibration of that variance on the dev split: nominal coverage of the central intervals
                          (10% ... 90%) against the share of dev labels inside them, per affect dimension
    tuning.png            dev CCC per trial and against the main hyperparameters (when a tuning run exists)

Inputs: ``RUN_URL/results.parquet`` (required), the model bundle ``RUN_URL/model`` (fps, and predictions when no
predictions URL is given), the dataset (gold standard of the plotted videos), a predictions URL (default
``RUN_URL/predictions`` if it exists) and a tuning run (default ``RUN_URL/tuning`` if it holds ``trials.parquet``).

Plots are drawn on bare :class:`matplotlib.figure.Figure` objects (the Agg canvas), never through pyplot's global
state, so reports can be written from worker threads.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affect_core.calibration import RELIABILITY_LEVELS, interval_z
from affect_core.data import delta
from affect_core.data.tracks import check_video_id
from affect_core.errors import AffectError
from affect_core.experiment import read_results, summary_markdown, variant_label
from affect_core.storage import Location, Where, exists, read_bytes, redact, resolve, write_bytes_atomic

REPORT_DIR = "report"
TUNING_DIR = "tuning"
PREDICTIONS_DIR = "predictions"
DIMENSION_COLOURS = {"arousal": "#c0392b", "valence": "#2471a3"}
# The trials table of a search (``tuning.tune`` writes it): trial_id, status, best_dev_ccc, last_dev_ccc, epochs and one
# column per searched parameter named ``section.name`` (``train.lr``, ``model.lstm_size``, ...).
TRIALS_FILE = "trials.parquet"
TRIAL_SCORE = "best_dev_ccc"
DPI = 100


@dataclass
class ReportResult:
    """Where a report went. plots: plot name (e.g. "ablation", "curves-dev_1") -> URL (redacted)."""

    report_url: str
    summary_url: str
    plots: dict[str, str] = field(default_factory=dict)
    summary: str = ""


@dataclass
class CurveData:
    """One video's predicted and gold tracks. Arrays: shape (T,); variance NaN where the model has none."""

    video_id: str
    time_s: np.ndarray
    predicted: dict[str, np.ndarray]
    variance: dict[str, np.ndarray]
    gold: dict[str, np.ndarray]
    face: np.ndarray | None = None  # (T,) bool, False where the frame has no face; None: not known


@dataclass
class Reliability:
    """Calibration of the predicted variance on a split: per affect dimension, the share of labelled frames inside
    each central interval of nominal coverage ``levels`` (observed), over ``frames`` frames. calibrated: whether the
    model bundle holds a calibration (None: not known, e.g. predictions of another run)."""

    split: str
    levels: tuple[float, ...]
    observed: dict[str, np.ndarray]
    frames: dict[str, int]
    calibrated: bool | None = None


def write_report(
    run_url: Where,
    *,
    dataset_url: str | Location | delta.VersionedLocation | None = None,
    predictions_url: str | Location | delta.VersionedLocation | None = None,
    tuning_url: Where | None = None,
    out_url: Where | None = None,
    video_ids: Sequence[str] | None = None,
    videos: int = 2,
    storage_options: dict[str, Any] | None = None,
) -> ReportResult:
    """Write summary.md and the PNG plots of the run at ``run_url``; return their URLs.

    video_ids: dev videos whose curves to draw (default: the first ``videos`` dev videos of the dataset).
    Curves need the dataset's gold standard; without ``dataset_url`` they are left out (said in the summary).
    Each URL is resolved here, once, with ``storage_options`` (a Location given instead was resolved before).
    """
    run = resolve(run_url, storage_options)
    out = resolve(out_url, storage_options) if out_url else run.join(REPORT_DIR)
    tuning = resolve(tuning_url, storage_options) if tuning_url else run.join(TUNING_DIR)
    rows = read_results(run).to_pylist()
    if not rows:
        raise AffectError(f"{run.display('results.parquet')}: the results table is empty")
    fps = run_fps(run)
    plots: dict[str, str] = {}
    notes: list[str] = []

    curves: list[CurveData] = []
    dataset = delta.resolve_versioned(dataset_url, storage_options) if dataset_url else None
    if dataset is not None:
        predictions = delta.resolve_versioned(predictions_url, storage_options) if predictions_url else None
        if predictions is None and run.exists(PREDICTIONS_DIR):
            predictions = delta.VersionedLocation(run.join(PREDICTIONS_DIR))
        curves = curve_data(
            run,
            dataset,
            predictions=predictions,
            video_ids=video_ids,
            videos=videos,
        )
    else:
        notes.append("Curves of dev videos need the dataset's gold standard: pass a dataset URL.")
    curve_files = [curve_file_name(curve.video_id, out) for curve in curves]  # refused before anything is written
    reliability = None
    if dataset is not None:
        reliability = reliability_data(run, dataset, predictions=predictions)

    _save(out, "ablation.png", ablation_figure(rows), plots)
    _save(out, "lag.png", lag_figure(rows, fps=fps), plots)
    for curve, name in zip(curves, curve_files, strict=True):
        _save(out, name, curves_figure(curve), plots)
    if reliability is not None:
        _save(out, "reliability.png", reliability_figure(reliability), plots)

    trials = read_trials(tuning)
    if trials is not None:
        figure = tuning_figure(trials)
        if figure is not None:
            _save(out, "tuning.png", figure, plots)

    summary = report_markdown(rows, fps=fps, plots=plots, out=out, trials=trials, notes=notes, reliability=reliability)
    write_bytes_atomic(out.fs, out.join("summary.md").path, summary.encode())
    return ReportResult(out.display(), out.display("summary.md"), plots, summary)


def curve_file_name(video_id: str, out: Location) -> str:
    """The plot file of a video's curves, ``curves-<video id>.png``; refuses an id that is no plain name (e.g.
    '../x', which a table may hold: its writers do not check ids) so that the plot stays inside ``out``."""
    try:
        check_video_id(video_id, out.display())
    except AffectError:
        raise AffectError(
            f"{out.display()}: video id {video_id[:80]!r} cannot name the plot of its curves; expected a plain name "
            "(letters, digits, '_', '-' or '.', no path separators or '..'). Pass other videos to the report"
        ) from None
    return f"curves-{video_id}.png"


def report_markdown(
    rows: list[dict[str, Any]],
    *,
    fps: float,
    plots: dict[str, str],
    out: Location,
    trials: pa.Table | None = None,
    notes: Sequence[str] = (),
    reliability: Reliability | None = None,
) -> str:
    """The report's summary: the run's paper-style tables (the same function as the run's own summary.md), the
    calibration of the predicted variance on dev, the best tuning trials and the plots (relative links, so the
    folder can be moved)."""
    lines = [summary_markdown(rows, fps=fps).rstrip("\n")]
    if reliability is not None:
        lines += ["", "## Calibration of the predicted variance", "", reliability_markdown(reliability)]
    if trials is not None:
        lines += ["", "## Tuning", "", tuning_markdown(trials)]
    if plots:
        lines += ["", "## Plots", ""]
        for name, url in plots.items():
            relative = url[len(out.display()) :].lstrip("/") if url.startswith(out.display()) else url
            lines.append(f"![{name}]({relative})")
    for note in notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- inputs
def run_fps(run: Location) -> float:
    """The frame rate recorded in the run's model bundle (25 fps, RECOLA's, when no bundle is there)."""
    try:
        manifest = json.loads(read_bytes(run.fs, run.join("model", "bundle.json").path))
        fps = float(manifest.get("fps", 0.0))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        fps = 0.0
    return fps if fps > 0 and math.isfinite(fps) else 25.0


def read_trials(tuning: Location) -> pa.Table | None:
    """The trials table of a tuning run (``trials.parquet``), or None when there is none."""
    path = tuning.join(TRIALS_FILE).path
    if not exists(tuning.fs, path):
        return None
    try:
        return pq.read_table(io.BytesIO(read_bytes(tuning.fs, path)))
    except (OSError, pa.ArrowException) as exc:
        raise AffectError(f"{tuning.display('trials.parquet')}: unreadable ({type(exc).__name__})") from None


def score_column(trials: pa.Table) -> str | None:
    """The column of a trials table holding each trial's dev CCC (:data:`TRIAL_SCORE`), None when it is missing."""
    return TRIAL_SCORE if TRIAL_SCORE in trials.column_names else None


def hyperparameter_columns(trials: pa.Table, limit: int = 5) -> list[str]:
    """The searched parameters (``section.name`` columns) that are numeric and vary between trials."""
    out = []
    for name in trials.column_names:
        if "." not in name or not _is_numeric(trials, name):
            continue
        values = np.asarray(trials.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        if np.unique(values[np.isfinite(values)]).size > 1:
            out.append(name)
    return out[:limit]


def _is_numeric(table: pa.Table, name: str) -> bool:
    kind = table.schema.field(name).type
    return pa.types.is_floating(kind) or pa.types.is_integer(kind)


def curve_data(
    run: Location,
    dataset: delta.VersionedLocation,
    *,
    predictions: delta.VersionedLocation | None,
    video_ids: Sequence[str] | None,
    videos: int,
) -> list[CurveData]:
    """Predicted and gold tracks of the chosen dev videos: from the predictions when given, else from the run's
    model bundle (the one prediction path, :meth:`ModelBundle.predict`)."""
    from affect_core.data.dataset import dataset_info

    info = dataset_info(dataset)
    if video_ids is None:
        video_ids = info.videos.get("dev", [])[: max(videos, 0)]
    known = {v for ids in info.videos.values() for v in ids}
    unknown = [v for v in video_ids if v not in known]
    if unknown:
        raise AffectError(f"{info.url}: no video {unknown[0]!r} in version {info.version}")
    if not video_ids:
        return []
    if predictions is not None:
        _check_predicted(predictions, video_ids)
    out = []
    for video, levels, variances in _predicted_videos(run, dataset, predictions, video_ids, info):
        gold = {d: video.labels(d) for d in ("arousal", "valence") if video.labels(d) is not None}
        face = np.isfinite(video.features).all(axis=1) if video.features.size else None
        out.append(CurveData(video.video_id, np.asarray(video.time_s), levels, variances, gold, face))
    return out


def reliability_data(
    run: Location,
    dataset: delta.VersionedLocation,
    *,
    predictions: delta.VersionedLocation | None,
    split: str = "dev",
    levels: Sequence[float] = RELIABILITY_LEVELS,
) -> Reliability | None:
    """How well the predicted variance is calibrated on ``split``: for each nominal coverage in ``levels``, the share
    of the split's labelled frames inside the central interval, per affect dimension (from the predictions when
    given, else the run's model predicts the videos). Streams one video at a time. None when the split has no
    labelled frame with a predicted variance."""
    from affect_core.calibration import interval_coverage
    from affect_core.data.dataset import dataset_info

    info = dataset_info(dataset)
    video_ids = info.videos.get(split, [])
    if not video_ids:
        return None
    counts: dict[str, np.ndarray] = {}
    frames: dict[str, int] = {}
    for video, levels_of, variances_of in _predicted_videos(run, dataset, predictions, video_ids, info):
        for dim, level in levels_of.items():
            gold = video.labels(dim)
            if gold is None:
                continue
            covered, counted = interval_coverage(level, variances_of[dim], gold, tuple(levels))
            counts[dim] = counts.get(dim, np.zeros(len(levels), np.int64)) + covered
            frames[dim] = frames.get(dim, 0) + counted
    observed = {d: counts[d] / frames[d] for d in counts if frames[d] > 0}
    if not observed:
        return None
    return Reliability(split, tuple(levels), observed, {d: frames[d] for d in observed}, _bundle_calibrated(run))


def _bundle_calibrated(run: Location) -> bool | None:
    """Whether the run's model bundle holds a calibration for every model (None without a bundle)."""
    try:
        manifest = json.loads(read_bytes(run.fs, run.join("model", "bundle.json").path))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    models = manifest.get("models", []) if isinstance(manifest, dict) else []
    return bool(models) and all(isinstance(m, dict) and m.get("calibration") for m in models)


def _predicted_videos(
    run: Location,
    dataset: delta.VersionedLocation,
    predictions: delta.VersionedLocation | None,
    video_ids: Sequence[str],
    info: Any,
) -> Iterator[tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(video, {dimension: level (T,)}, {dimension: variance (T,)}) of each of ``video_ids``, one at a time: from the
    predictions table when given, else predicted by the run's model bundle."""
    from affect_core.data.dataset import iter_videos

    store = None
    bundle = None
    feature_set = None
    if predictions is not None:
        from affect_core.scoring import read_predictions

        store = read_predictions(predictions)
    else:
        from affect_core.artifact import load_bundle

        bundle = load_bundle(run.join("model"))
        feature_set = bundle.feature_set if bundle.feature_set in info.feature_sets else None
    for video in iter_videos(dataset, video_ids=list(video_ids), feature_set=feature_set):
        levels: dict[str, np.ndarray] = {}
        variances: dict[str, np.ndarray] = {}
        if store is not None:
            if video.video_id not in store:
                continue
            table = store[video.video_id]
            frames = table.column("frame").to_numpy()
            keep = frames < video.num_frames
            for dim in ("arousal", "valence"):
                level = np.full(video.num_frames, np.nan)
                var = np.full(video.num_frames, np.nan)
                level[frames[keep]] = table.column(dim).to_numpy(zero_copy_only=False)[keep]
                var[frames[keep]] = table.column(f"{dim}_var").to_numpy(zero_copy_only=False)[keep]
                if np.isfinite(level).any():
                    levels[dim], variances[dim] = level, var
        else:
            assert bundle is not None
            for dim, (level, var) in bundle.predict(video.features).items():
                levels[dim], variances[dim] = np.asarray(level, np.float64), np.asarray(var, np.float64)
        yield video, levels, variances


def _check_predicted(predictions: delta.VersionedLocation, video_ids: Sequence[str]) -> None:
    """Refuse a video the predictions table lacks (its index only: no rows are read)."""
    from affect_core.scoring import read_predictions

    store = read_predictions(predictions)
    for video_id in video_ids:
        if video_id not in store:
            raise AffectError(
                f"{store.out.display()}: no predictions for video {video_id!r}; score the dataset first or leave "
                "out the predictions URL"
            )


# ------------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(out: Location, name: str, figure: Any, plots: dict[str, str]) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    write_bytes_atomic(out.fs, out.join(name).path, buffer.getvalue())
    plots[name[: -len(".png")]] = out.display(name)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def _variants(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    return sorted({(r["model"], r["align"], bool(r["joint"])) for r in rows})


def ablation_figure(rows: list[dict[str, Any]]) -> Any:
    """Bars of mean CCC over seeds per variant and affect dimension, error bars = std over seeds (ddof 0, as in
    the summary tables); one panel per evaluated split other than train."""
    splits = [s for s in ("dev", "test") if any(r["split"] == s for r in rows)] or ["train"]
    variants = _variants(rows)
    dims = [d for d in ("arousal", "valence") if any(r["dimension"] == d for r in rows)]
    figure = _figure(max(4.0, 1.6 * len(variants) + 2.0) * len(splits), 4.0)
    axes = figure.subplots(1, len(splits), squeeze=False)[0]
    width = 0.8 / max(len(dims), 1)
    x = np.arange(len(variants))
    for ax, split in zip(axes, splits, strict=True):
        for j, dim in enumerate(dims):
            stats = [
                _mean_std(
                    [
                        r["ccc"]
                        for r in rows
                        if (r["model"], r["align"], bool(r["joint"])) == v
                        and r["dimension"] == dim
                        and r["split"] == split
                    ]
                )
                for v in variants
            ]
            means = [m for m, _ in stats]
            stds = [s for _, s in stats]
            ax.bar(
                x + (j - (len(dims) - 1) / 2) * width,
                means,
                width,
                yerr=stds,
                capsize=4,
                label=dim,
                color=DIMENSION_COLOURS.get(dim),
            )
        ax.set_xticks(x, [variant_label(*v) for v in variants], rotation=20)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_ylabel("CCC (mean and std over seeds)")
        ax.set_title(f"{split} split")
        ax.legend()
    return figure


def lag_figure(rows: list[dict[str, Any]], *, fps: float) -> Any:
    """The learned lag mu in seconds per model (variant and affect model), mean and std over seeds."""
    keys = sorted({(r["model"], r["align"], bool(r["joint"]), r["name"]) for r in rows})
    labels, means, stds, colours = [], [], [], []
    for model, align, joint, name in keys:
        by_seed = {
            r["seed"]: r["mu_frames"]
            for r in rows
            if (r["model"], r["align"], bool(r["joint"]), r["name"]) == (model, align, joint, name)
        }
        mean, std = _mean_std([m / fps for m in by_seed.values()])
        labels.append(f"{variant_label(model, align, joint)}\n{name}")
        means.append(mean)
        stds.append(std)
        colours.append(DIMENSION_COLOURS.get(name, "#7d3c98"))
    figure = _figure(max(4.0, 1.3 * len(keys) + 2.0), 4.0)
    ax = figure.subplots()
    x = np.arange(len(keys))
    ax.bar(x, means, 0.6, yerr=stds, capsize=4, color=colours)
    ax.set_xticks(x, labels)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("mu (s); > 0: labels lag the video")
    ax.set_title("Learned annotation lag\n(mean and std over seeds)")
    return figure


def curves_figure(curve: CurveData) -> Any:
    """Predicted against gold-standard tracks of one video, one panel per affect dimension, with the 90% interval of
    the variance each prediction carries (prediction +- 1.645 sd; calibrated, the label's given the video) where the
    model has one, and the frames without a face shaded: there the filter runs without observations and the
    interval widens."""
    from affect_core.metrics import sequence_metrics

    dims = [d for d in ("arousal", "valence") if d in curve.predicted or d in curve.gold]
    figure = _figure(10.0, 2.6 * max(len(dims), 1) + 0.6)
    axes = figure.subplots(max(len(dims), 1), 1, squeeze=False, sharex=True)[:, 0]
    t = curve.time_s
    for ax, dim in zip(axes, dims, strict=False):
        title = f"{curve.video_id}: {dim}"
        if dim in curve.gold:
            ax.plot(t, curve.gold[dim], color="black", linewidth=1.2, label="gold standard")
        if dim in curve.predicted:
            level = curve.predicted[dim]
            var = curve.variance.get(dim)
            if var is not None and np.isfinite(var).any():
                sd = np.sqrt(np.clip(np.nan_to_num(var, nan=0.0), 0.0, None))
                z90 = interval_z(0.9)
                ax.fill_between(
                    t,
                    level - z90 * sd,
                    level + z90 * sd,
                    color=DIMENSION_COLOURS[dim],
                    alpha=0.25,
                    label="90% interval",
                )
            ax.plot(t, level, color=DIMENSION_COLOURS[dim], linewidth=1.2, label="predicted")
            if dim in curve.gold:
                metrics = sequence_metrics(level, curve.gold[dim])
                title += f" (CCC {metrics['ccc']:.3f}, RMSE {metrics['rmse']:.3f})"
        if curve.face is not None and not curve.face.all() and len(curve.face) == len(t):
            ax.fill_between(
                t,
                -1.05,
                1.05,
                where=~curve.face,
                step="mid",
                color="grey",
                alpha=0.2,
                linewidth=0,
                label="no face",
            )
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(dim)
        ax.set_title(title)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time (s)")
    return figure


def reliability_figure(reliability: Reliability) -> Any:
    """Nominal coverage of the central intervals against the share of labels observed inside them, one line per
    affect dimension; the diagonal is perfect calibration (above it: intervals too wide, below: too narrow)."""
    figure = _figure(4.6, 4.4)
    ax = figure.subplots()
    nominal = np.asarray(reliability.levels) * 100
    ax.plot([0, 100], [0, 100], color="black", linewidth=0.8, linestyle="--", label="perfect calibration")
    for dim, observed in reliability.observed.items():
        ax.plot(
            nominal,
            observed * 100,
            "o-",
            color=DIMENSION_COLOURS.get(dim),
            label=f"{dim} ({reliability.frames[dim]:,} frames)",
        )
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("nominal coverage of the central interval (%)")
    ax.set_ylabel(f"{reliability.split} labels inside it (%)")
    state = {True: "calibrated", False: "not calibrated", None: "variance as predicted"}[reliability.calibrated]
    ax.set_title(f"Reliability of the predicted variance\n({reliability.split} split, {state})")
    ax.legend(loc="upper left", fontsize="small")
    return figure


def reliability_markdown(reliability: Reliability) -> str:
    """The reliability plot's numbers as a Markdown table: per dimension, the share of labels inside the central
    50% and 90% intervals (and every level the plot shows)."""
    levels = list(reliability.levels)
    header = "| dimension | frames | " + " | ".join(f"{round(100 * level)}%" for level in levels) + " |"
    lines = [
        f"Share of {reliability.split} labels inside the central interval of each nominal coverage "
        "(prediction +- z sd, sd from the variance each prediction carries).",
        "",
        header,
        "|" + "---|" * (2 + len(levels)),
    ]
    for dim, observed in reliability.observed.items():
        cells = " | ".join(f"{100 * value:.1f}%" for value in observed)
        lines.append(f"| {dim} | {reliability.frames[dim]} | {cells} |")
    if reliability.calibrated is False:
        lines += [
            "",
            "The model bundle holds no calibration (it was trained before calibration existed): the variance is the "
            "filter's own state variance, not the label's. Train again for calibrated intervals.",
        ]
    return "\n".join(lines)


def tuning_figure(trials: pa.Table) -> Any | None:
    """Dev CCC per trial (with the best so far) and against each main hyperparameter; None without a score."""
    score = score_column(trials)
    if score is None or trials.num_rows == 0:
        return None
    values = np.asarray(trials.column(score).to_numpy(zero_copy_only=False), dtype=np.float64)
    params = hyperparameter_columns(trials)
    figure = _figure(3.2 * (1 + len(params)) + 0.5, 3.4)
    axes = figure.subplots(1, 1 + len(params), squeeze=False)[0]
    order = np.arange(1, len(values) + 1)
    axes[0].plot(order, values, "o", color="#2471a3", label="trial")
    best = np.fmax.accumulate(np.where(np.isfinite(values), values, -np.inf))
    axes[0].step(order, np.where(np.isfinite(best), best, np.nan), where="post", color="black", label="best so far")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(f"{score}")
    axes[0].legend(fontsize="small")
    for ax, name in zip(axes[1:], params, strict=True):
        x = np.asarray(trials.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        ax.plot(x, values, "o", color="#2471a3")
        positive = x[np.isfinite(x)]
        if positive.size and (positive > 0).all() and positive.max() / positive.min() > 50:
            ax.set_xscale("log")
        ax.set_xlabel(name)
    figure.suptitle(f"Tuning: {trials.num_rows} trial(s)")
    return figure


def tuning_markdown(trials: pa.Table, top: int = 5) -> str:
    """The best trials as a markdown table (score, the model each trial trained, main hyperparameters)."""
    score = score_column(trials)
    if score is None:
        return f"{trials.num_rows} trial(s); no dev CCC column in trials.parquet."
    model = ["model.model"] if "model.model" in trials.column_names else []
    columns = [score, *model, *hyperparameter_columns(trials)]
    rows = trials.select(columns).to_pylist()
    rows.sort(key=lambda r: -(r[score] if r[score] is not None and np.isfinite(r[score]) else -np.inf))
    lines = [f"{trials.num_rows} trial(s); the best {min(top, len(rows))} by {score}:", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:top]:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return redact(str(value))
