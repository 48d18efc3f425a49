"""Dev CCC of every variant of the paper's Tables I-III on a generated corpus (one seed), and the learned lag.

Prints a markdown table; the figures recorded in docs/results.md come from this script. Usage:

    python -m benchmarks.variants [--videos 9 --frames 7501 --epochs 40 --dimension arousal --feature-set appearance]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.experiment import variant_label
from affect_core.runtime import retain_freed_memory
from affect_core.synth import SynthConfig, generate_corpus, select_feature_set
from affect_core.training import train_model

VARIANTS = [
    ("baseline", "none"),
    ("lstm-kf", "none"),
    ("lstm-kf", "manual"),
    ("lstm-kf", "adaptive"),
    ("lstm-ekf", "none"),
    ("lstm-ekf", "manual"),
    ("lstm-ekf", "adaptive"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=9)
    parser.add_argument("--frames", type=int, default=7501)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--window-frames", type=int, default=750)
    parser.add_argument("--dimension", default="arousal")
    parser.add_argument("--feature-set", default="appearance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="all", help="comma-separated model/align pairs, or all")
    args = parser.parse_args()
    retain_freed_memory()  # as the affect CLI and the Ray workers do
    torch.set_num_threads(args.threads)
    synth = SynthConfig(videos_per_split=args.videos, frames=args.frames)
    corpus = select_feature_set(generate_corpus(synth), args.feature_set)
    train, dev = corpus.split("train"), corpus.split("dev")
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {args.threads}; corpus {args.videos} videos/split x {args.frames} frames, "
        f"{corpus.feature_dim} {args.feature_set} features, planted lag {synth.lag_frames} frames"
    )
    print("| variant | dev CCC | dev RMSE | dev PCC | mu (frames) | sigma^2 | epochs | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    wanted = VARIANTS if args.variants == "all" else [tuple(v.split("/")) for v in args.variants.split(",")]
    for model, align in wanted:
        config = RunConfig(
            model=ModelConfig(model=model, align=align, dimension=args.dimension),
            train=TrainConfig(max_epochs=args.epochs, window_frames=args.window_frames, batch_size=8, patience=10),
        )
        started = time.perf_counter()
        result = train_model(train, dev, config, progress=False)
        m = result.metrics["dev"][args.dimension]
        print(
            f"| {variant_label(model, align, False)} | {m['ccc']:.3f} | {m['rmse']:.3f} | {m['pcc']:.3f} | "
            f"{result.mu_frames:.1f} | {result.sigma2:.1f} | {result.epochs} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
