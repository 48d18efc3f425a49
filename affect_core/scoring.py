"""Scoring: per-frame valence and arousal with the filter's variance for every video, and evaluation against labels.

Predictions layout of PRED_URL (readable by pyarrow.dataset, pandas, polars and duckdb as one dataset):

    part-<video_id>.parquet   one file per video, columns PREDICTION_SCHEMA, frames in order
    _manifest.json            written last: model id, videos and rows; its presence means the job finished

Each video's file is written atomically and is the whole video, so an interrupted job re-run skips the finished videos
and never duplicates a row. Files whose names start with "_" are ignored by Parquet dataset readers.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from affect_core.artifact import ModelBundle
from affect_core.data.readers import check_video_id
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.metrics import average_over_sequences, sequence_metrics
from affect_core.storage import Location, exists, list_dir, read_bytes, resolve, write_bytes_atomic

PREDICTION_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
        ("arousal_var", pa.float32()),
        ("valence_var", pa.float32()),
        ("model_id", pa.string()),
    ]
)
MANIFEST = "_manifest.json"
# Videos longer than this are scored in chunks with the LSTM and filter state carried across (bounded memory).
CHUNK_FRAMES = 15_000


@dataclass
class ScoreResult:
    url: str
    videos: int
    frames: int
    skipped: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def check_compatible(bundle: ModelBundle, feature_names: list[str], where: str) -> None:
    """Refuse a model trained on another feature space than the data's."""
    if len(feature_names) != len(bundle.feature_names) or (
        feature_names and bundle.feature_names and list(feature_names) != list(bundle.feature_names)
    ):
        raise AffectError(
            f"{where}: the data has {len(feature_names)} features but the model was trained on "
            f"{len(bundle.feature_names)} features of set {bundle.feature_set!r}; score with data of the same "
            "feature set"
        )


def prediction_table(bundle: ModelBundle, video: Video, model_id: str) -> pa.Table:
    """Predictions of one video as a table in PREDICTION_SCHEMA (a dimension the bundle lacks is null)."""
    tracks = bundle.predict(video.features, chunk_frames=CHUNK_FRAMES)
    t = video.num_frames
    empty = np.full(t, np.nan, dtype=np.float32)
    columns: dict[str, Any] = {
        "video_id": pa.array([video.video_id] * t, pa.string()),
        "frame": pa.array(np.arange(t, dtype=np.int32)),
        "time_s": pa.array(np.asarray(video.time_s, dtype=np.float64)),
    }
    for dim in ("arousal", "valence"):
        level, var = tracks.get(dim, (empty, empty))
        columns[dim] = pa.array(np.asarray(level, np.float32), from_pandas=dim not in tracks)
        columns[f"{dim}_var"] = pa.array(np.asarray(var, np.float32), from_pandas=True)
    columns["model_id"] = pa.array([model_id] * t, pa.string())
    return pa.table(columns, schema=PREDICTION_SCHEMA)


def part_name(video_id: str) -> str:
    return f"part-{video_id}.parquet"


def check_video_ids(video_ids: Iterable[str], out: Location) -> None:
    """Refuse, before anything is written, a video id that would name a file outside PRED_URL (e.g. '../x')."""
    for video_id in video_ids:
        check_video_id(video_id, out.display())


def write_video_predictions(out: Location, table: pa.Table, video_id: str) -> None:
    check_video_id(video_id, out.display())  # the part file's name comes from the data: never let it leave ``out``
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(out.fs, out.join(part_name(video_id)).path, buffer.getvalue())


def finished_videos(out: Location) -> set[str]:
    """Video ids whose prediction file is already complete under ``out``."""
    names = {name for name, kind in list_dir(out.fs, out.path) if kind == "file"}
    return {n[len("part-") : -len(".parquet")] for n in names if n.startswith("part-") and n.endswith(".parquet")}


def write_manifest(out: Location, model_id: str, video_ids: Iterable[str]) -> None:
    """Write ``_manifest.json`` last, once every video's file exists: the job is complete."""
    manifest = {
        "model_id": model_id,
        "videos": sorted(video_ids),
        "schema": [f.name for f in PREDICTION_SCHEMA],
    }
    write_bytes_atomic(out.fs, out.join(MANIFEST).path, json.dumps(manifest, indent=2).encode())


def score_videos(
    bundle: ModelBundle,
    videos: Iterable[Video],
    out_url: str,
    *,
    feature_names: list[str],
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> ScoreResult:
    """Score every video into ``out_url``; videos already scored there are skipped (idempotent re-runs)."""
    started = time.perf_counter()
    out = resolve(out_url, storage_options)
    check_compatible(bundle, feature_names, out.display())
    out.fs.makedirs(out.path, exist_ok=True)
    done = finished_videos(out)
    model_id = bundle.model_id
    ids, frames, skipped = [], 0, 0
    for video in tqdm(videos, total=total, desc="scoring", unit="video", disable=not progress):
        ids.append(video.video_id)
        if video.video_id in done:
            skipped += 1
            continue
        write_video_predictions(out, prediction_table(bundle, video, model_id), video.video_id)
        frames += video.num_frames
    write_manifest(out, model_id, ids)
    return ScoreResult(out.url, len(ids), frames, skipped, time.perf_counter() - started)


def score_dataset(
    data_url: str,
    model_url: str,
    out_url: str,
    *,
    splits: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> ScoreResult:
    """Score a dataset (or bare features URL) with a model bundle in this process, streaming one video at a time.

    The bundle's feature set is selected from the dataset when it holds several; unknown splits and video ids that
    would escape ``out_url`` are refused before anything is written.
    """
    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import dataset_info, iter_videos

    info = dataset_info(data_url, storage_options=storage_options)
    unknown = [s for s in splits or [] if s not in info.videos]
    if unknown:
        raise AffectError(f"{info.url}: split {unknown[0]!r} has no videos; available: {', '.join(info.videos)}")
    bundle = load_bundle(model_url, storage_options)
    feature_set = bundle.feature_set if bundle.feature_set in info.feature_sets else None
    names = list(info.feature_names)
    if feature_set is not None and names:
        lo, hi = info.feature_sets[feature_set]
        names = names[lo:hi]
    wanted = [v for s, ids in info.videos.items() if not splits or s in splits for v in ids]
    check_video_ids(wanted, resolve(out_url, storage_options))
    videos = iter_videos(data_url, splits=splits or None, feature_set=feature_set, storage_options=storage_options)
    return score_videos(
        bundle,
        videos,
        out_url,
        feature_names=names,
        storage_options=storage_options,
        progress=progress,
        total=len(wanted),
    )


def read_predictions(pred_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, pa.Table]:
    """Prediction tables per video id from PRED_URL."""
    loc = resolve(pred_url, storage_options)
    if not exists(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: no predictions here")
    out = {}
    for video_id in sorted(finished_videos(loc)):
        data = read_bytes(loc.fs, loc.join(part_name(video_id)).path)
        out[video_id] = pq.read_table(io.BytesIO(data))
    if not out:
        raise AffectError(f"{loc.display()}: no prediction files (part-*.parquet) here")
    return out


def evaluate_predictions(
    predictions: dict[str, pa.Table], videos: Iterable[Video]
) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {dimension: {ccc, rmse, pcc, sequences}}}: per sequence, then averaged over a split's sequences.

    Frames are matched by frame index; a labelled video without predictions is an error (the evaluation would be
    silently partial otherwise).
    """
    per: dict[str, dict[str, list[dict[str, float]]]] = {}
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
            per.setdefault(video.split, {}).setdefault(dim, []).append(sequence_metrics(aligned, gold))
    result: dict[str, dict[str, dict[str, float]]] = {}
    for split, dims in per.items():
        result[split] = {}
        for dim, rows in dims.items():
            result[split][dim] = {**average_over_sequences(rows), "sequences": float(len(rows))}
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
