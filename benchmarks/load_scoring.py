"""Peak memory of `affect score` against corpus size and video length, measured side by side in one run.

Each scoring job runs `affect score` in its own subprocess, which reports its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Two comparisons, as ratios:

- many short videos: a corpus of ``--small`` videos against one of ``--large`` videos (``--frames`` frames each);
- one long video: ``--short-frames`` frames (6 min at 25 fps) against ``--long-frames`` (1 hour).

The corpora are generated (affect_core.synth) and written as bare Parquet features URLs in the dataset schema, one row
group per video, so the input is read by the same streaming reader `affect score` uses; the model is a one-epoch
LSTM-KF with adaptive alignment trained on a small corpus of the same feature space.

    python -m benchmarks.load_scoring [--small 200] [--large 2000] [--frames 50] [--long-frames 90000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from affect_core.config import RunConfig
from affect_core.data.dataset import dataset_metadata, dataset_schema, video_table
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.runtime import retain_freed_memory
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.synth.generator import feature_sets

FEATURES = {"appearance_dim": 6, "geometric_dim": 8, "lag_s": 0.4}

# Runs the CLI in this subprocess, then prints its own peak RSS (Linux reports ru_maxrss in KiB).
_MEASURE = """
import json, resource, sys, time
from affect_cli.main import app
started = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=True)
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
print(json.dumps({"code": code, "seconds": time.perf_counter() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_features(path: Path, videos: int, frames: int, seed: int = 0) -> int:
    """A bare Parquet features file of ``videos`` generated videos (one row group each); returns the frames written."""
    per_split = max(1, -(-videos // 3))
    corpus = generate_corpus(SynthConfig(videos_per_split=per_split, frames=frames, seed=seed, **FEATURES))
    chosen = corpus.videos[:videos]
    # The generator notes its sets as "name:dim"; a dataset records [{name, start, stop}].
    sets = feature_sets(corpus)
    corpus.metadata["feature_sets"] = json.dumps(
        [{"name": n, "start": r.start, "stop": r.stop} for n, r in sets.items()]
    )
    schema = dataset_schema(corpus.feature_dim, dataset_metadata(corpus, "sha256:generated", "synth", "generated"))
    with pq.ParquetWriter(path, schema) as writer:
        for video in chosen:
            writer.write_table(video_table(video, schema))
    return sum(v.num_frames for v in chosen)


def train_model(run_url: str) -> str:
    """A one-epoch LSTM-KF-AA arousal model on a small corpus of the same feature space; returns its bundle URL."""
    corpus = generate_corpus(SynthConfig(videos_per_split=2, frames=300, seed=1, **FEATURES))
    config = RunConfig()
    config.model.model, config.model.align, config.train.max_epochs = "lstm-kf", "adaptive", 1
    config.train.window_frames = 100
    return run_seed(plan_seed_tasks(config, "arousal", [0])[0], corpus, run_url).bundle_url


def measure_score(data_url: str, model_url: str, out_url: str) -> dict[str, float]:
    """Score ``data_url`` with `affect score` (single process) in a fresh subprocess: exit code, seconds, peak RSS."""
    command = [sys.executable, "-c", _MEASURE, "score", data_url, "--model", model_url, "--out", out_url]
    command += ["--no-ray", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"affect score failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["code"] != 0:
        raise RuntimeError(f"affect score exited {report['code']}: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200, help="videos in the small corpus")
    parser.add_argument("--large", type=int, default=2000, help="videos in the large corpus")
    parser.add_argument("--frames", type=int, default=50, help="frames per video of both corpora")
    parser.add_argument("--short-frames", type=int, default=9_000, help="frames of the short single video")
    parser.add_argument("--long-frames", type=int, default=90_000, help="frames of the long single video (1 h)")
    args = parser.parse_args()
    retain_freed_memory()  # as the affect CLI and the Ray workers do
    with tempfile.TemporaryDirectory(prefix="affect-load-") as tmp:
        root = Path(tmp)
        model = train_model(str(root / "run"))
        rows = []
        for label, videos, frames in (
            ("corpus", args.small, args.frames),
            ("corpus", args.large, args.frames),
            ("one video", 1, args.short_frames),
            ("one video", 1, args.long_frames),
        ):
            data = root / f"features-{videos}x{frames}.parquet"
            started = time.perf_counter()
            total = write_features(data, videos, frames)
            generated = time.perf_counter() - started
            report = measure_score(str(data), model, str(root / f"preds-{videos}x{frames}"))
            rows.append((label, videos, frames, total, generated, report))
    print("| input | videos | frames each | frames | score s | frames/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for label, videos, frames, total, _, report in rows:
        print(
            f"| {label} | {videos} | {frames} | {total} | {report['seconds']:.1f} | "
            f"{total / report['seconds']:.0f} | {report['peak_rss_mb']:.0f} |"
        )
    ratio = rows[1][5]["peak_rss_mb"] / rows[0][5]["peak_rss_mb"]
    print(f"peak RSS ratio, {args.large} / {args.small} videos: {ratio:.3f}")
    print(
        f"peak RSS ratio, {args.long_frames} / {args.short_frames} frames: "
        f"{rows[3][5]['peak_rss_mb'] / rows[2][5]['peak_rss_mb']:.3f}"
    )


if __name__ == "__main__":
    main()
