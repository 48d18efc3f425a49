"""Forward+backward time of the filter layers against the front-end alone.

Batch: 9 sequences x 7501 frames x 168 features, float32, CPU. Front-end: Linear(29)+ReLU -> Linear(16)+ReLU ->
LSTM(16) -> Linear(3)+tanh; the filters run on its output. Each configuration is timed side by side in one run
(median of --repeats; the step-by-step reference loops once, they take seconds), with 1 and 2 torch threads.

    python -m benchmarks.filter_speed [--repeats 5] [--threads 1 2] [--skip-reference]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from affect_core.filters import ExtendedKalmanFilter, KalmanFilter

BATCH, STEPS, FEATURES = 9, 7501, 168


class FrontEnd(nn.Module):
    """x `(B, T, 168)` -> observations `(B, T, 3)` in [-1, 1] (paper section III front-end)."""

    def __init__(self, features: int = FEATURES, obs_dim: int = 3) -> None:
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(features, 29), nn.ReLU(), nn.Linear(29, 16), nn.ReLU())
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, obs_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.ff(x))
        return torch.tanh(self.head(hidden))


def time_forward_backward(step: Callable[[], torch.Tensor], repeats: int) -> float:
    step().backward()  # warm-up (and, for the compiled path, loading the cached kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(threads: int, repeats: int, skip_reference: bool) -> list[tuple[str, float]]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, STEPS, FEATURES)
    mask = torch.rand(BATCH, STEPS) > 0.1  # 10% of frames without a face
    front_end = FrontEnd()

    def with_filter(layer: nn.Module | None, use_mask: bool = False) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            front_end.zero_grad()
            observations = front_end(x)
            if layer is None:
                return observations.square().mean()
            out = layer(observations, mask=mask if use_mask else None)
            return out.states[..., 0::3].square().mean() + out.covariances.diagonal(dim1=-2, dim2=-1).mean()

        return step

    configurations: list[tuple[str, nn.Module | None, bool, int]] = [
        ("front-end alone", None, False, repeats),
        ("front-end + KF fast (scan)", KalmanFilter(method="scan"), False, repeats),
        ("front-end + KF compiled", KalmanFilter(method="compiled"), False, repeats),
        ("front-end + KF fast, 10% frames masked", KalmanFilter(method="fast"), True, repeats),
        ("front-end + KF scan, 10% frames masked", KalmanFilter(method="scan"), True, repeats),
        ("front-end + EKF fast (compiled)", ExtendedKalmanFilter(method="fast"), False, repeats),
        ("front-end + EKF fast, 10% frames masked", ExtendedKalmanFilter(method="fast"), True, repeats),
    ]
    if not skip_reference:
        configurations += [
            ("front-end + KF reference loop", KalmanFilter(method="reference"), False, 1),
            ("front-end + EKF reference loop", ExtendedKalmanFilter(method="reference"), False, 1),
        ]
    results = []
    for name, layer, use_mask, count in configurations:
        results.append((name, time_forward_backward(with_filter(layer, use_mask), count)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow step-by-step loops")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, {platform.system()}")
    print(f"torch {torch.__version__}; batch {BATCH} x {STEPS} x {FEATURES} float32, forward+backward")
    for threads in args.threads:
        results = run(threads, args.repeats, args.skip_reference)
        base = results[0][1]
        print(f"\ntorch threads: {torch.get_num_threads()}")
        print(f"{'configuration':44s} {'seconds':>9s} {'x front-end':>12s}")
        for name, seconds in results:
            print(f"{name:44s} {seconds:9.3f} {seconds / base:12.2f}")


if __name__ == "__main__":
    main()
