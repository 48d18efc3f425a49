"""Wall time of training 10 seeds together against one seed alone, side by side in one run.

Same variant, same generated data, a fixed number of epochs (early stopping off), torch threads = 1. Also times the
seeds one by one with ``train_model`` for reference, and checks that each seed's dev CCC trained together equals its
dev CCC trained alone. With ``--repeats N`` one seed and the stack run N times, interleaved, and the medians are
compared (the load average is printed before and after: on a shared machine the spread says as much as the median).

    python -m benchmarks.seed_batch [--seeds 10] [--epochs 3] [--frames 1500] [--videos-per-split 4]
        [--model lstm-kf] [--align adaptive] [--window 0] [--repeats 1] [--skip-one-by-one] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import numba
import torch

from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.runtime import retain_freed_memory
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import train_model, train_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--videos-per-split", type=int, default=4)
    parser.add_argument("--model", default="lstm-kf")
    parser.add_argument("--align", default="adaptive")
    parser.add_argument("--window", type=int, default=0, help="truncated-BPTT window in frames (0 = whole sequences)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of one seed and of the stack, interleaved")
    parser.add_argument("--skip-one-by-one", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the models train (cpu or cuda)")
    args = parser.parse_args()
    retain_freed_memory()  # as the affect CLI and the Ray workers do
    torch.set_num_threads(1)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.system()}, load average {_load()}; "
        f"python {platform.python_version()}, torch {torch.__version__}, numba {numba.__version__}; "
        f"torch threads {torch.get_num_threads()}; device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    corpus = generate_corpus(
        SynthConfig(videos_per_split=args.videos_per_split, frames=args.frames, appearance_dim=6, geometric_dim=8)
    )
    train, dev = corpus.split("train"), corpus.split("dev")
    config = RunConfig(
        model=ModelConfig(model=args.model, align=args.align),
        train=TrainConfig(
            max_epochs=args.epochs, patience=args.epochs + 1, window_frames=args.window or None, batch_size=8
        ),
    )
    print(
        f"{args.model}/{args.align}, {args.epochs} epochs, {len(train)} train + {len(dev)} dev videos x {args.frames} "
        f"frames, {'whole sequences' if not args.window else f'{args.window}-frame windows'}"
    )
    warm = copy.deepcopy(config)
    warm.train.max_epochs = 1
    train_seeds(
        train[:1], dev[:1], warm, [0, 1], progress=False, device=args.device
    )  # load compiled kernels before timing

    def alone(seed: int) -> tuple[float, float]:
        seed_config = copy.deepcopy(config)
        seed_config.train.seed = seed
        started = time.perf_counter()
        result = train_model(train, dev, seed_config, progress=False, device=args.device)
        return time.perf_counter() - started, result.metrics["dev"][config.model.dimension]["ccc"]

    seeds = list(range(args.seeds))
    ones, stacks, one_cpu, stack_cpu = [], [], [], []
    for _ in range(args.repeats):
        cpu = time.process_time()
        ones.append(alone(0)[0])
        one_cpu.append(time.process_time() - cpu)
        cpu, started = time.process_time(), time.perf_counter()
        results = train_seeds(train, dev, config, seeds, progress=False, device=args.device)
        stacks.append(time.perf_counter() - started)
        stack_cpu.append(time.process_time() - cpu)
    one_seconds, batched_seconds = statistics.median(ones), statistics.median(stacks)
    if args.repeats > 1:
        print(f"runs: 1 seed {_listed(ones)} s; {args.seeds} seeds {_listed(stacks)} s; load average now {_load()}")
        print(f"ratio per run: {', '.join(f'{b / a:.2f}x' for a, b in zip(ones, stacks, strict=True))}")
    median = "median, " if args.repeats > 1 else ""
    print(f"1 seed alone (train_model):          {one_seconds:8.2f} s ({median}{args.repeats} run(s))")
    print(
        f"{args.seeds} seeds trained together:         {batched_seconds:8.2f} s   "
        f"= {batched_seconds / one_seconds:.2f}x one seed (target <= 3x)"
    )
    # The process's CPU time (one thread: its own work) moves less than wall time when other jobs share the cores.
    one_cpu_median, stack_cpu_median = statistics.median(one_cpu), statistics.median(stack_cpu)
    print(
        f"CPU time ({median.rstrip(', ') or 'one run'}): 1 seed {one_cpu_median:.2f} s, {args.seeds} seeds "
        f"{stack_cpu_median:.2f} s = {stack_cpu_median / one_cpu_median:.2f}x"
    )
    if not args.skip_one_by_one:
        total, worst = 0.0, 0.0
        for seed, result in zip(seeds, results, strict=True):
            seconds, ccc = alone(seed)
            total += seconds
            worst = max(worst, abs(ccc - result.metrics["dev"][config.model.dimension]["ccc"]))
        print(
            f"{args.seeds} seeds one by one (train_model): {total:8.2f} s   = {total / one_seconds:.2f}x one seed; "
            f"stack is {total / batched_seconds:.2f}x faster; largest dev CCC difference {worst:.1e}"
        )


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _listed(seconds: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in seconds)


if __name__ == "__main__":
    main()
