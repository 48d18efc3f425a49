"""Peak memory of single-process ingest against corpus size, for a source that holds every video in one file (the
parquet layout's ROOT/features.parquet and labels.parquet): the streamed read (chunks of rows, one video validated at
a time, the videos waiting for the write spilled to a local temporary file) beside the whole-corpus read it replaced.

The corpora are N videos x ``--frames`` frames x ``--features`` features (a 10-frame run without a face per video,
labels on train and dev), written in video order with row groups of ``--row-group-rows`` rows (what pyarrow and
pandas write by default is of that kind; ``--row-group-per-video`` writes one row group per video instead, as
``affect synth`` does). Each ingest runs in its own subprocess with the CLI's process settings (two malloc arenas,
freed memory kept), so that its peak RSS is its own (``os.wait4``).

    python -m benchmarks.ingest_memory [--sizes 1000 10000] [--frames 100] [--features 88] [--paths streamed whole]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FPS = 25.0
# Videos generated and written at a time (bounds the generator's own memory).
WRITE_VIDEOS = 500


def write_source(root: Path, n: int, frames: int, features: int, row_group_rows: int | None) -> int:
    """Write the parquet-layout corpus of ``n`` videos to ``root``; returns its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    third = max(1, n // 3)
    ids = [f"{('train', 'dev', 'test')[min(2, i // third)]}_{i}" for i in range(n)]
    splits = [video_id.split("_")[0] for video_id in ids]
    names = [f"f{j}" for j in range(features)]
    feature_schema = pa.schema(
        [("video_id", pa.string()), ("frameTime", pa.float64())] + [(name, pa.float32()) for name in names]
    )
    label_schema = pa.schema(
        [("video_id", pa.string()), ("frameTime", pa.float64()), ("arousal", pa.float32()), ("valence", pa.float32())]
    )
    time_s = np.arange(frames) / FPS
    with (
        pq.ParquetWriter(root / "features.parquet", feature_schema) as feature_file,
        pq.ParquetWriter(root / "labels.parquet", label_schema) as label_file,
    ):
        for first in range(0, n, WRITE_VIDEOS):
            chunk = range(first, min(n, first + WRITE_VIDEOS))
            values, labels, labelled = [], [], []
            for index in chunk:
                rng = np.random.default_rng(index)
                block = rng.normal(size=(frames, features)).astype(np.float32)
                block[20:30] = np.nan
                values.append(block)
                if splits[index] != "test":
                    labels.append(np.tanh(np.cumsum(rng.normal(size=(frames, 2)), axis=0) / 20).astype(np.float32))
                    labelled.append(index)
            matrix = np.concatenate(values)
            table = pa.Table.from_arrays(
                [pa.array(np.repeat([ids[i] for i in chunk], frames)), pa.array(np.tile(time_s, len(chunk)))]
                + [pa.array(matrix[:, j]) for j in range(features)],
                schema=feature_schema,
            )
            feature_file.write_table(table, row_group_size=frames if row_group_rows is None else row_group_rows)
            if labelled:
                rated = np.concatenate(labels)
                label_table = pa.Table.from_arrays(
                    [
                        pa.array(np.repeat([ids[i] for i in labelled], frames)),
                        pa.array(np.tile(time_s, len(labelled))),
                        pa.array(rated[:, 0]),
                        pa.array(rated[:, 1]),
                    ],
                    schema=label_schema,
                )
                label_file.write_table(label_table, row_group_size=frames if row_group_rows is None else row_group_rows)
    pq.write_table(pa.table({"video_id": ids, "split": splits}), root / "partition.parquet")
    return sum(p.stat().st_size for p in root.iterdir())


def stage_ingest(root: str, url: str, path: str) -> dict[str, Any]:
    """One ingest in this process: ``streamed`` (the single-file reader) or ``whole`` (the whole-corpus read)."""
    from affect_core.data.dataset import ingest, ingestion

    if path == "whole":
        ingestion.single_table = lambda *args, **kwargs: False  # the path ingest took before the streamed reader
    result = ingest(root, url, layout="parquet", progress=False)
    return {"videos": result.videos, "rows": result.rows, "content_hash": result.content_hash}


def run_stage(args: list[str]) -> dict[str, Any]:
    """Run one ingest in a subprocess; its result plus wall seconds and peak RSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.ingest_memory", *args], stdout=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {args} failed")
    result = json.loads(output.strip().splitlines()[-1])
    result.update({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--features", type=int, default=88)
    parser.add_argument("--row-group-rows", type=int, default=65_536)
    parser.add_argument("--row-group-per-video", action="store_true")
    parser.add_argument("--paths", nargs="+", default=["streamed", "whole"], choices=["streamed", "whole"])
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        from affect_core.runtime import limit_malloc_arenas, retain_freed_memory

        limit_malloc_arenas()  # the process settings of the CLI (affect_cli.main)
        retain_freed_memory()
        started = time.perf_counter()
        result = stage_ingest(args.root, args.url, args.stage)
        result["work_s"] = time.perf_counter() - started
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="ingest-memory-"))
    row_groups = None if args.row_group_per_video else args.row_group_rows
    shape = "one row group per video" if row_groups is None else f"row groups of {row_groups} rows"
    print(f"{args.frames} frames x {args.features} features per video, {shape}")
    print("| videos | source MB | path | work s | peak RSS MB | peak / smallest corpus's |")
    print("|---|---|---|---|---|---|")
    smallest: dict[str, float] = {}
    hashes: dict[int, set[str]] = {}
    try:
        for n in args.sizes:
            root = work / f"src-{n}"
            size = write_source(root, n, args.frames, args.features, row_groups)
            for path in args.paths:
                url = work / f"ds-{n}-{path}"
                result = run_stage(["--stage", path, "--root", str(root), "--url", str(url)])
                hashes.setdefault(n, set()).add(result["content_hash"])
                smallest.setdefault(path, result["peak_rss_mb"])
                ratio = result["peak_rss_mb"] / smallest[path]
                print(
                    f"| {n} | {size / 1e6:.0f} | {path} | {result['work_s']:.1f} | {result['peak_rss_mb']:.0f} | "
                    f"{ratio:.2f}x |",
                    flush=True,
                )
                shutil.rmtree(url, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if any(len(found) > 1 for found in hashes.values()):
        raise SystemExit("the streamed and the whole read gave different datasets")


if __name__ == "__main__":
    main()
