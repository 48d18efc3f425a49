"""Evaluation of predictions against a dataset's labels: CCC, RMSE and PCC per sequence, averaged over each split's
sequences, streamed one video at a time; and the result as a Markdown table.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.metrics import sequence_metrics


def evaluate_predictions(
    predictions: Mapping[str, pa.Table], videos: Iterable[Video]
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {dimension: {ccc, rmse, pcc, sequences}}}: per sequence, then averaged over a split's sequences.

    Streams: one video and its predictions at a time (``predictions`` from :func:`read_predictions` reads rows on
    access, fastest with ``videos`` in the table's order), so memory is bounded whatever the corpus: the per-sequence
    metrics are kept as packed doubles (24 bytes a sequence). Frames are matched by frame index; a labelled video
    without predictions is an error (the evaluation would be silently partial otherwise).
    """
    per: dict[str, dict[str, dict[str, array]]] = {}
    for video in videos:
        if not video.labelled:
            continue
        table = predictions.get(video.video_id)
        if table is None:
            raise AffectError(f"predictions: video {video.video_id!r} ({video.split}) has labels but no predictions")
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
    result: dict[str, dict[str, dict[str, float]]] = {}
    for split, dims in per.items():
        result[split] = {}
        for dim, packed in dims.items():
            # the mean over sequences (average_over_sequences, read from the packed columns)
            means = {name: float(np.mean(np.frombuffer(values, dtype=np.float64))) for name, values in packed.items()}
            result[split][dim] = {**means, "sequences": float(len(next(iter(packed.values()))))}
    if not result:
        raise AffectError("evaluation: no labelled video has predictions for arousal or valence")
    return result


def evaluation_markdown(result: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| split | dimension | sequences | CCC | RMSE | PCC |", "|---|---|---|---|---|---|"]
    for split in sorted(
        result, key=lambda s: ("train", "dev", "test").index(s) if s in ("train", "dev", "test") else 9
    ):
        for dim, m in result[split].items():
            lines.append(
                f"| {split} | {dim} | {int(m['sequences'])} | {m['ccc']:.4f} | {m['rmse']:.4f} | {m['pcc']:.4f} |"
            )
    return "\n".join(lines) + "\n"
