"""`make gpu-check`: the GPU paths run and agree with the CPU, with figures, in under 5 minutes on one GPU.

1. Trains 2 seeds of LSTM-KF-AA and of LSTM-EKF-AA on the GPU and on the CPU from the same data and seeds; each seed's
   dev CCC and learned lag must agree within TOLERANCE (float32 arithmetic in another order: cuDNN's LSTM and the
   Kalman filter's parallel scan on the GPU, the compiled kernels on the CPU).
2. Scores a generated corpus with a model loaded on the GPU and on the CPU; the predictions must agree within
   SCORE_TOLERANCE.
3. Runs the filter benchmark and the seed benchmark on the GPU and prints their figures.

Prints the card's name first. Exits 2 when no CUDA device is present (GPU figures stay unmeasured), 1 when a check
fails.

    python -m benchmarks.gpu_check [--skip-benchmarks]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch

from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.inference import predict_batch
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import train_seeds

TOLERANCE = {"dev_ccc": 2e-3, "mu_frames": 0.2}
SCORE_TOLERANCE = 1e-3
SEEDS = [0, 1]


def check_training(corpus, variant: str, accelerator: str = "cuda", epochs: int = 4) -> bool:
    config = RunConfig(
        model=ModelConfig(model=variant, align="adaptive", window=50, mu_init_frames=5),
        train=TrainConfig(max_epochs=epochs, patience=10, window_frames=500, batch_size=8),
    )
    train, dev = corpus.split("train"), corpus.split("dev")
    results = {}
    for device in (accelerator, "cpu"):
        started = time.perf_counter()
        results[device] = train_seeds(train, dev, config, SEEDS, progress=False, device=device)
        seconds = time.perf_counter() - started
        print(f"  {variant:8s} {device:4s}: 2 seeds x {epochs} epochs in {seconds:6.2f} s")
    ok = True
    for seed, gpu, cpu in zip(SEEDS, results[accelerator], results["cpu"], strict=True):
        d_ccc = abs(gpu.metrics["dev"]["arousal"]["ccc"] - cpu.metrics["dev"]["arousal"]["ccc"])
        d_mu = abs(gpu.mu_frames - cpu.mu_frames)
        good = d_ccc <= TOLERANCE["dev_ccc"] and d_mu <= TOLERANCE["mu_frames"]
        ok &= good
        print(
            f"  {variant} seed {seed}: dev CCC cuda {gpu.metrics['dev']['arousal']['ccc']:.4f} cpu "
            f"{cpu.metrics['dev']['arousal']['ccc']:.4f} (|diff| {d_ccc:.1e}), mu cuda {gpu.mu_frames:.2f} cpu "
            f"{cpu.mu_frames:.2f} (|diff| {d_mu:.1e}) {'ok' if good else 'FAIL'}"
        )
        if gpu.model.frontend.head_bias.device.type != torch.device(accelerator).type:
            print(f"  FAIL: the model trained on {accelerator} is not there")
            ok = False
    return ok


def check_scoring(corpus, accelerator: str = "cuda") -> bool:
    config = RunConfig(model=ModelConfig(model="lstm-kf", align="adaptive", window=50))
    config.train = TrainConfig(max_epochs=1, window_frames=500)
    trained = train_seeds(corpus.split("train"), corpus.split("dev"), config, [0], progress=False, device="cpu")[0]
    features = [v.features for v in corpus.videos]
    frames = sum(len(f) for f in features)
    predictions = {}
    for device in ("cpu", accelerator):
        model = trained.model.to(device).eval()
        predict_batch(model, trained.transform, features[:2])  # warm-up
        synchronize(device)
        started = time.perf_counter()
        predictions[device] = predict_batch(model, trained.transform, features)
        synchronize(device)
        seconds = time.perf_counter() - started
        print(
            f"  scoring {device:4s}: {len(features)} videos, {frames} frames in {seconds:.3f} s "
            f"({frames / seconds:,.0f} frames/s)"
        )
    worst = max(
        float(np.nanmax(np.abs(a.levels - b.levels)))
        for a, b in zip(predictions["cpu"], predictions[accelerator], strict=True)
    )
    ok = worst <= SCORE_TOLERANCE
    print(f"  scoring: largest |{accelerator} - cpu| level difference {worst:.1e} {'ok' if ok else 'FAIL'}")
    return ok


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-benchmarks", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; the GPU figures stay unmeasured")
        return 2
    print(f"device: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), torch {torch.__version__}")
    corpus = generate_corpus(SynthConfig(videos_per_split=4, frames=1500, appearance_dim=6, geometric_dim=8, seed=5))
    ok = True
    print("training, cuda against cpu:")
    for variant in ("lstm-kf", "lstm-ekf"):
        ok &= check_training(corpus, variant)
    print("scoring, cuda against cpu:")
    ok &= check_scoring(corpus)
    if not args.skip_benchmarks:
        for module, extra in (
            ("benchmarks.filter_speed", ["--device", "cuda", "--skip-reference", "--repeats", "5", "--threads", "1"]),
            ("benchmarks.seed_batch", ["--device", "cuda", "--skip-one-by-one", "--epochs", "2"]),
        ):
            print(f"\n$ python -m {module} {' '.join(extra)}", flush=True)
            ok &= subprocess.run([sys.executable, "-m", module, *extra]).returncode == 0
    print("\ngpu-check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
