"""Scoring throughput (frames/s) of Ray Data against the single-process scorer, side by side in one run.

A generated corpus (``--videos`` videos of ``--frames`` frames; the reference figure is 200 x 7501) is ingested, a
one-epoch LSTM-KF arousal model is trained on it, and the whole corpus is scored Parquet to Parquet twice: by
``affect_core.scoring.score_videos`` in this process, and by ``tuning.score.score_dataset`` on an in-process Ray
with ``--cpus`` CPUs (one actor per CPU). Both outputs are checked equal to 1e-5. The I/O floor is the same
single-process pipeline (read each video, build its prediction table, write its Parquet file) with an identity model
that predicts constants: the target is scoring within 1.5x of it.

    python -m benchmarks.ray_scoring [--videos 200] [--frames 7501] [--cpus 2] [--features 14]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from affect_core.artifact import load_bundle
from affect_core.config import RunConfig
from affect_core.data.dataset import dataset_info, ingest, iter_videos, read_corpus
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.scoring import read_predictions, score_videos
from affect_core.synth import SynthConfig, write_corpus
from tuning.cluster import ensure_ray, shutdown_ray
from tuning.score import score_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--videos", type=int, default=200, help="videos in the corpus (rounded down to equal train/dev/test splits)"
    )
    parser.add_argument("--frames", type=int, default=7501)
    parser.add_argument("--features", type=int, default=14, help="appearance + geometric features")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.system()}; python {platform.python_version()}"
    )
    per_split = max(1, args.videos // 3)
    appearance = args.features // 2
    with tempfile.TemporaryDirectory(prefix="affect-bench-") as tmp:
        work = Path(tmp)
        config = SynthConfig(
            videos_per_split=per_split,
            frames=args.frames,
            appearance_dim=appearance,
            geometric_dim=args.features - appearance,
        )
        write_corpus(config, work / "corpus", "parquet")
        dataset = str(work / "dataset")
        ingest(str(work / "corpus"), dataset, layout="parquet", progress=False)
        info = dataset_info(dataset)
        run = RunConfig()
        run.model.model, run.train.max_epochs, run.train.window_frames = "lstm-kf", 1, 500
        corpus = read_corpus(dataset, splits=["train", "dev"])
        model = run_seed(plan_seed_tasks(run, "arousal", [0])[0], corpus, str(work / "run")).bundle_url
        del corpus
        print(
            f"corpus: {info.rows} frames in {sum(len(v) for v in info.videos.values())} videos, "
            f"{info.feature_dim} features; model LSTM-KF-AA (arousal)"
        )

        bundle = load_bundle(model)
        started = time.perf_counter()
        score_videos(
            IdentityModel(bundle.feature_names, bundle.feature_set),
            iter_videos(dataset),
            str(work / "floor"),
            feature_names=info.feature_names,
            progress=False,
        )
        floor = time.perf_counter() - started
        started = time.perf_counter()
        score_videos(
            bundle,
            iter_videos(dataset),
            str(work / "single"),
            feature_names=info.feature_names,
            progress=False,
        )
        single = time.perf_counter() - started
        ensure_ray(num_cpus=args.cpus)
        try:
            started = time.perf_counter()
            score_dataset(dataset, model, str(work / "ray"))
            on_ray = time.perf_counter() - started
        finally:
            shutdown_ray()
        a, b = read_predictions(str(work / "single")), read_predictions(str(work / "ray"))
        worst = max(
            float(
                np.nanmax(
                    np.abs(
                        a[v].column(c).to_numpy(zero_copy_only=False) - b[v].column(c).to_numpy(zero_copy_only=False)
                    ),
                    initial=0.0,
                )
            )
            for v in a
            for c in ("arousal", "arousal_var")
        )
    print(f"{'scorer':36s} {'seconds':>9s} {'frames/s':>11s}")
    print(f"{'I/O floor (identity model)':36s} {floor:9.1f} {info.rows / floor:11.0f}")
    label = f"single process ({torch.get_num_threads()} torch threads)"
    print(f"{label:36s} {single:9.1f} {info.rows / single:11.0f}")
    print(f"{f'Ray Data, {args.cpus} actors (incl. start-up)':36s} {on_ray:9.1f} {info.rows / on_ray:11.0f}")
    print(f"single process / I/O floor: {single / floor:.2f}x (target at most 1.5x)")
    print(f"speed-up: {single / on_ray:.2f}x; largest difference between the two: {worst:.1e}")


class IdentityModel:
    """Stands in for a model bundle in the scoring pipeline and predicts constants: what is left is reading the
    features and writing the predictions."""

    model_id = "identity"

    def __init__(self, feature_names: list[str], feature_set: str) -> None:
        self.feature_names, self.feature_set = feature_names, feature_set

    def predict(self, features: np.ndarray, *, chunk_frames: int | None = None) -> dict[str, tuple]:
        zeros = np.zeros(len(features), dtype=np.float32)
        return {"arousal": (zeros, zeros), "valence": (zeros, zeros)}


if __name__ == "__main__":
    main()
