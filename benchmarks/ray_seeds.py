"""Wall time of a multi-seed Ray run on one 1-CPU node against two 1-CPU nodes, side by side in one run.

Each configuration starts its own local Ray cluster on 127.0.0.1 (``affect_services.RayCluster``), runs
``affect train DATASET --seeds N --ray`` through ``RAY_ADDRESS`` in a subprocess (as a user would), and stops the
cluster. The wall time includes Ray Train's per-seed start-up (a controller and a worker process per seed).

    python -m benchmarks.ray_seeds [--seeds 4] [--epochs 10] [--frames 1500] [--videos-per-split 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from affect_core.data.dataset import ingest
from affect_core.synth import SynthConfig, write_corpus
from affect_services import RayCluster


def run_seeds(workdir: Path, dataset: str, worker_nodes: int, args: argparse.Namespace) -> float:
    """Seconds for ``args.seeds`` seeds on a cluster of 1 + ``worker_nodes`` one-CPU nodes."""
    cluster = RayCluster(workdir / f"ray-{worker_nodes}", head_cpus=1, worker_nodes=worker_nodes, worker_cpus=1)
    cluster.start()
    try:
        command = [
            sys.executable,
            "-m",
            "affect_cli.main",
            "train",
            dataset,
            "--out",
            str(workdir / f"run-{worker_nodes}"),
            "--dimension",
            "arousal",
            "--model",
            args.model,
            "--seeds",
            str(args.seeds),
            "--epochs",
            str(args.epochs),
            "--ray",
            "--no-progress",
        ]
        started = time.perf_counter()
        subprocess.run(command, env={**os.environ, **cluster.env()}, check=True, capture_output=True, text=True)
        return time.perf_counter() - started
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--videos-per-split", type=int, default=2)
    parser.add_argument("--model", default="lstm-kf")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.system()}; python {platform.python_version()}"
    )
    print(
        f"{args.seeds} seeds of {args.model}, {args.epochs} epochs, {args.videos_per_split} videos per split x "
        f"{args.frames} frames, 14 features; 1 torch thread per seed"
    )
    with tempfile.TemporaryDirectory(prefix="affect-bench-") as tmp:
        workdir = Path(tmp)
        config = SynthConfig(
            videos_per_split=args.videos_per_split, frames=args.frames, appearance_dim=6, geometric_dim=8
        )
        write_corpus(config, workdir / "corpus", "parquet")
        dataset = str(workdir / "dataset")
        ingest(str(workdir / "corpus"), dataset, layout="parquet", progress=False)
        one = run_seeds(workdir, dataset, 0, args)
        two = run_seeds(workdir, dataset, 1, args)
    print(f"{'cluster':28s} {'seconds':>9s}")
    print(f"{'1 node x 1 CPU':28s} {one:9.1f}")
    print(f"{'2 nodes x 1 CPU':28s} {two:9.1f}")
    print(f"speed-up: {one / two:.2f}x")


if __name__ == "__main__":
    main()
