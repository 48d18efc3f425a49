"""Data-parallel training: wall time of one seed trained by 1 and by 2 workers, side by side in one run.

Each worker is a process with one torch thread, joined by torch.distributed's gloo backend on 127.0.0.1 (what
`affect train --ray --workers N` sets up on one machine), holding its part of the videos; the timed part is
:func:`affect_core.training.train_seeds` (process start and the group's set-up reported apart). Also checks that
both give the same dev CCC.

    python -m benchmarks.data_parallel [--videos-per-split 8] [--frames 3000] [--epochs 3] [--window 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.parallel import Workers
from affect_core.runtime import retain_freed_memory
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import train_seeds


def corpus(args: argparse.Namespace):
    return generate_corpus(
        SynthConfig(videos_per_split=args.videos_per_split, frames=args.frames, appearance_dim=20, geometric_dim=20)
    )


def config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        model=ModelConfig(model="lstm-kf", align="adaptive"),
        train=TrainConfig(max_epochs=args.epochs, patience=args.epochs + 1, window_frames=args.window, batch_size=8),
    )


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    retain_freed_memory()
    torch.set_num_threads(1)
    started = time.perf_counter()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    data = corpus(args)
    train, dev = data.split("train"), data.split("dev")
    mine = [v for i, v in enumerate(train) if i % world == rank]
    mine_dev = [v for i, v in enumerate(dev) if i % world == rank]
    setup = time.perf_counter() - started
    dist.barrier()
    started = time.perf_counter()
    result = train_seeds(mine, mine_dev, config(args), [0], progress=False, workers=Workers())[0]
    seconds = time.perf_counter() - started
    if rank == 0:
        with open(out, "w") as handle:
            handle.write(f"{seconds} {setup} {result.metrics['dev']['arousal']['ccc']}")
    dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> tuple[float, float, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result")
        mp.start_processes(worker, args=(world, port, args, out), nprocs=world, join=True, start_method="spawn")
        seconds, setup, ccc = (float(x) for x in open(out).read().split())
    return seconds, setup, ccc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos-per-split", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, load average {load}; torch {torch.__version__}")
    print(
        f"LSTM-KF-AA, 1 seed, {args.videos_per_split} train + {args.videos_per_split} dev videos x {args.frames} "
        f"frames x 40 features, {args.epochs} epochs, {args.window}-frame windows, 1 torch thread per worker"
    )
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for world in (1, 2):  # interleaved, so both see the same machine
            seconds, setup, ccc = run(world, args)
            times[world].append(seconds)
            print(f"  {world} worker(s): {seconds:7.2f} s training (+{setup:.2f} s set-up), dev CCC {ccc:.6f}")
    one, two = sorted(times[1])[len(times[1]) // 2], sorted(times[2])[len(times[2]) // 2]
    print(f"median: 1 worker {one:.2f} s, 2 workers {two:.2f} s: speed-up {one / two:.2f}x")


if __name__ == "__main__":
    main()
