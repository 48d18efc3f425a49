"""Scoring throughput (frames/s) against its I/O floor, and Ray Data against the single-process scorer, in one run.

A generated corpus (``--videos`` videos of ``--frames`` frames; the reference figure is 200 x 7501) is ingested, a
one-epoch LSTM-KF arousal model is trained on it, and the whole corpus is scored Parquet to Parquet by
``affect_core.scoring.score_videos`` in this process, by the same scorer with one video per model pass, and by
``tuning.score.score_dataset`` on an in-process Ray with ``--cpus`` CPUs (one actor per CPU). The outputs are checked
equal to 1e-5. The I/O floor is the same single-process pipeline (read each video, build its prediction table, write
its Parquet file, with the reading and writing threads) with an identity model that predicts constants: the target is
scoring within 1.5x of it. The floor and the single-process runs alternate ``--repeats`` times and the medians are
reported; Ray runs once (its figure includes its start-up).

    python -m benchmarks.ray_scoring [--videos 200] [--frames 7501] [--cpus 2] [--features 14] [--repeats 3]
                                     [--threads N] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from affect_core.artifact import load_bundle
from affect_core.config import RunConfig
from affect_core.data.dataset import dataset_info, ingest, iter_videos, read_corpus
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.runtime import retain_freed_memory
from affect_core.scoring import model_threads, read_predictions, score_videos
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
    parser.add_argument("--repeats", type=int, default=3, help="runs of the floor and the single-process scorer")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray Data run")
    args = parser.parse_args()
    retain_freed_memory()  # as the affect CLI and the Ray workers do
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.system()}; "
        f"python {platform.python_version()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
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
        identity = IdentityModel(bundle.feature_names, bundle.feature_set)

        def scorer(model: object, batch_videos: int | None = None) -> Callable[[str], object]:
            return lambda out: score_videos(
                model,  # type: ignore[arg-type]
                iter_videos(dataset),
                out,
                feature_names=info.feature_names,
                progress=False,
                batch_videos=batch_videos,
                predict=getattr(model, "predict_batch", None),
            )

        runs = {
            "floor": scorer(identity),
            "single": scorer(bundle),
            "one per pass": scorer(bundle, batch_videos=1),
        }
        scorer(bundle)(str(work / "warm-up"))  # the compiled filter kernels load once per process
        load_before = os.getloadavg()[0]
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(max(1, args.repeats)):
            for name, score in runs.items():
                out = str(work / f"{name.replace(' ', '-')}-{repeat}")
                started = time.perf_counter()
                score(out)
                seconds[name].append(time.perf_counter() - started)
        floor, single, one_per_pass = (statistics.median(seconds[name]) for name in runs)
        last = max(1, args.repeats) - 1
        a = read_predictions(str(work / f"single-{last}"))
        worst = largest_difference(a, read_predictions(str(work / f"one-per-pass-{last}")))
        on_ray = None
        if not args.no_ray:
            ensure_ray(num_cpus=args.cpus)
            try:
                started = time.perf_counter()
                score_dataset(dataset, model, str(work / "ray"))
                on_ray = time.perf_counter() - started
            finally:
                shutdown_ray()
            worst = max(worst, largest_difference(a, read_predictions(str(work / "ray"))))
    threads = torch.get_num_threads()
    print(f"{'scorer (median of runs)':48s} {'seconds':>8s} {'frames/s':>11s} {'x floor':>8s}")
    rows = [
        ("I/O floor (identity model)", floor),
        (f"single process, batched ({model_threads()} of {threads} torch threads)", single),
        ("single process, one video per model pass", one_per_pass),
    ]
    if on_ray is not None:
        rows.append((f"Ray Data, {args.cpus} actors (incl. start-up)", on_ray))
    for label, value in rows:
        print(f"{label:48s} {value:8.2f} {info.rows / value:11,.0f} {value / floor:8.2f}")
    print("seconds of each run:", "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in seconds.items()))
    print(f"load average (1 min) at the start {load_before:.2f}, at the end {os.getloadavg()[0]:.2f}")
    verdict = "met" if single <= 1.5 * floor else "not met"
    print(f"single process / I/O floor: {single / floor:.2f}x (target at most 1.5x: {verdict})")
    print(f"batched against one video per pass: {one_per_pass / single:.2f}x faster")
    if on_ray is not None:
        print(f"Ray against single process: {single / on_ray:.2f}x")
    print(f"largest difference between the scorers' outputs: {worst:.1e}")


def largest_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two scorers' predictions (arousal and its variance)."""
    assert sorted(a) == sorted(b), "the scorers scored different videos"
    return max(
        float(
            np.nanmax(
                np.abs(a[v].column(c).to_numpy(zero_copy_only=False) - b[v].column(c).to_numpy(zero_copy_only=False)),
                initial=0.0,
            )
        )
        for v in a
        for c in ("arousal", "arousal_var")
    )


class IdentityModel:
    """Stands in for a model bundle in the scoring pipeline and predicts constants: what is left is reading the
    features and writing the predictions."""

    model_id = "identity"

    def __init__(self, feature_names: list[str], feature_set: str) -> None:
        self.feature_names, self.feature_set = feature_names, feature_set

    def predict_batch(self, features: list[np.ndarray]) -> list[dict[str, tuple]]:
        """Per video, constant tracks of its length."""
        out = []
        for f in features:
            zeros = np.zeros(len(f), dtype=np.float32)
            out.append({"arousal": (zeros, zeros), "valence": (zeros, zeros)})
        return out


if __name__ == "__main__":
    main()
