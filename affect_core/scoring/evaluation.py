"""Evaluation of predictions against a dataset's labels: CCC, RMSE and PCC per sequence, averaged over each split's
sequences; the calibration of the predicted variance (coverage of the central 50% and 90% intervals, Gaussian negative
log-likelihood) over every labelled frame of a split; streamed one video at a time; and the result as a Markdown table.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from affect_core.calibration import REPORTED_LEVELS, gaussian_nll, interval_coverage
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.metrics import sequence_metrics

# A 90% interval whose coverage of held-out labels misses 90% by more than this is called out under the table.
MISCALIBRATED = 0.1


def principal_face(table: pa.Table) -> pa.Table:
    """The rows of the principal face (``face_id`` 0): the face a dataset's labels are of. Predictions scored with
    ``--faces all`` hold one track per person; tables without the column hold the principal face only."""
    if "face_id" not in table.column_names:
        return table
    return table.filter(pc.equal(table.column("face_id"), 0))


def evaluate_predictions(
    predictions: Mapping[str, pa.Table], videos: Iterable[Video]
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {dimension: {ccc, rmse, pcc, sequences, coverage50, coverage90, nll, frames[, frames_with_face,
    frames_without_face]}}} (the face counts: the predicted frames of the labelled videos, from the face column).

    ccc, rmse, pcc: per sequence, then averaged over a split's sequences (AVEC protocol). coverage50, coverage90: the
    share of the split's labelled frames whose label lies in the prediction's central 50% / 90% interval
    (prediction +- 0.674 / 1.645 sd, sd from the ``<dimension>_var`` column); nll: the mean Gaussian negative
    log-likelihood of those labels; frames: the frames they count. Calibration is a frequency over frames, so these
    are pooled over the split's frames, not averaged per sequence; NaN where the predictions carry no variance.

    Streams: one video and its predictions at a time (``predictions`` from :func:`read_predictions` reads rows on
    access, fastest with ``videos`` in the table's order), so memory is bounded whatever the corpus: the per-sequence
    metrics are kept as packed doubles (24 bytes a sequence). Frames are matched by frame index; a labelled video
    without predictions is an error (the evaluation would be silently partial otherwise).
    """
    per: dict[str, dict[str, dict[str, array]]] = {}
    # per split and dimension: [frames covered by each REPORTED_LEVELS interval..., NLL sum, frames counted]
    pooled: dict[str, dict[str, list[float]]] = {}
    faces: dict[str, dict[str, list[int]]] = {}  # per split and dimension: [frames with a face, without] (face column)
    for video in videos:
        if not video.labelled:
            continue
        table = predictions.get(video.video_id)
        if table is None:
            raise AffectError(f"predictions: video {video.video_id!r} ({video.split}) has labels but no predictions")
        table = principal_face(table)
        frames = table.column("frame").to_numpy()
        for dim in ("arousal", "valence"):
            gold = video.labels(dim)
            pred_col = table.column(dim).to_numpy(zero_copy_only=False)
            if gold is None or not np.isfinite(pred_col).any():
                continue
            if frames.max(initial=-1) >= len(gold) or len(frames) != len(gold):
                raise AffectError(
                    f"predictions: video {video.video_id!r} has {len(frames)} predicted frames, labels have {len(gold)}"
                )
            aligned = np.full(len(gold), np.nan)
            aligned[frames] = pred_col
            packed = per.setdefault(video.split, {}).setdefault(dim, {})
            for name, value in sequence_metrics(aligned, gold).items():
                packed.setdefault(name, array("d")).append(value)
            variance = np.full(len(gold), np.nan)
            if f"{dim}_var" in table.column_names:
                variance[frames] = table.column(f"{dim}_var").to_numpy(zero_copy_only=False)
            covered, counted = interval_coverage(aligned, variance, gold)
            nll, _ = gaussian_nll(aligned, variance, gold)
            sums = pooled.setdefault(video.split, {}).setdefault(dim, [0.0] * (len(REPORTED_LEVELS) + 2))
            for i, value in enumerate([*covered.tolist(), nll, counted]):
                sums[i] += value
            if "face" in table.column_names:  # predictions written before the face column have no count
                face = table.column("face").to_numpy(zero_copy_only=False)
                seen = faces.setdefault(video.split, {}).setdefault(dim, [0, 0])
                seen[0], seen[1] = seen[0] + int(face.sum()), seen[1] + int((~face).sum())
    result: dict[str, dict[str, dict[str, float]]] = {}
    for split, dims in per.items():
        result[split] = {}
        for dim, packed in dims.items():
            # the mean over sequences (average_over_sequences, read from the packed columns)
            means = {name: float(np.mean(np.frombuffer(values, dtype=np.float64))) for name, values in packed.items()}
            result[split][dim] = {**means, "sequences": float(len(next(iter(packed.values()))))}
            *covered, nll, counted = pooled[split][dim]
            for level, count in zip(REPORTED_LEVELS, covered, strict=True):
                result[split][dim][f"coverage{round(level * 100)}"] = count / counted if counted else float("nan")
            result[split][dim]["nll"] = nll / counted if counted else float("nan")
            result[split][dim]["frames"] = float(counted)
            if dim in faces.get(split, {}):
                with_face, without = faces[split][dim]
                result[split][dim].update(frames_with_face=float(with_face), frames_without_face=float(without))
    if not result:
        raise AffectError("evaluation: no labelled video has predictions for arousal or valence")
    return result


def evaluation_markdown(result: dict[str, dict[str, dict[str, float]]]) -> str:
    """The result of :func:`evaluate_predictions` as a Markdown table, one row per split and dimension. Coverage and
    NLL read n/a where the predictions carry no variance."""
    lines = [
        "| split | dimension | sequences | CCC | RMSE | PCC | 50% interval | 90% interval | NLL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split in sorted(
        result, key=lambda s: ("train", "dev", "test").index(s) if s in ("train", "dev", "test") else 9
    ):
        for dim, m in result[split].items():
            lines.append(
                f"| {split} | {dim} | {int(m['sequences'])} | {m['ccc']:.4f} | {m['rmse']:.4f} | {m['pcc']:.4f} | "
                f"{_share(m.get('coverage50'))} | {_share(m.get('coverage90'))} | {_number(m.get('nll'))} |"
            )
    counted = [(split, dim, m) for split in result for dim, m in result[split].items() if "frames_with_face" in m]
    if counted:  # frames the predictions measured (a face) and those the filter bridged (no face)
        lines += [
            "",
            "Faces: "
            + "; ".join(
                f"{split} {dim} {int(m['frames_with_face'])} frame(s) with a face, "
                f"{int(m['frames_without_face'])} without"
                for split, dim, m in counted
            )
            + ".",
        ]
    lines += [
        "",
        "Intervals: the share of labelled frames inside prediction +- 0.674 sd (50%) and +- 1.645 sd (90%), sd from "
        "the predicted variance; NLL: mean Gaussian negative log-likelihood per frame (lower is better).",
    ]
    off = [
        f"{split} {dim} ({_share(m.get('coverage90'))})"
        for split in result
        for dim, m in result[split].items()
        if split != "train" and abs(m.get("coverage90", 0.9) - 0.9) > MISCALIBRATED
    ]
    if off:
        lines += [
            "",
            f"The 90% interval misses its coverage by more than {round(100 * MISCALIBRATED)} points on "
            f"{', '.join(off)}: the variance is not calibrated for these labels (a model bundle trained before "
            "calibration existed carries the filter's own state variance; `affect score` says so).",
        ]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None and np.isfinite(value) else "n/a"


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None and np.isfinite(value) else "n/a"
