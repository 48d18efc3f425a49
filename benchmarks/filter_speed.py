"""Forward+backward time of the model variants against their front-end alone, side by side in one run.

Batch: 9 sequences x 7501 frames x 168 features, float32, CPU. The front-end is the model's own (FF 29 + ReLU,
FF 16 + ReLU, LSTM 16, FC + tanh); the full variants add the filter (KF or EKF) and the adaptive alignment (AA,
window 100), i.e. LSTM-KF-AA and LSTM-EKF-AA exactly as trained (`AffectModel`). The loss is the mean square of the
output (of o_t for the front-end, of y_t for the variants). Each variant runs with 0%, 10%, 30% and 60% of the
frames without a face, in runs (stretches of 1 to 250 frames, geometric lengths of mean 25 frames = 1 s, as faces go
missing in video; NaN features, as the model receives them). Median of --repeats, with 1 and 2 torch threads, the
repeats interleaved across the configurations (round by round) so that the ratios hold on a shared machine whose
load drifts; the step-by-step reference loops run once (they take tens of seconds) unless --skip-reference.

--flush-denormals runs with denormal floats flushed to zero (`torch.set_flush_denormal`, which the compiled kernels
called on the same thread inherit): the gradient reaching the front-end is zero through each stretch without a face,
and the LSTM's backward, decaying through the stretch, otherwise spends its time on denormal arithmetic.

    python -m benchmarks.filter_speed [--repeats 7] [--threads 1 2] [--skip-reference] [--device cuda]
        [--flush-denormals]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numba
import torch

from affect_core.config import ModelConfig
from affect_core.model import AffectModel
from affect_core.runtime import retain_freed_memory

BATCH, STEPS, FEATURES = 9, 7501, 168
TARGETS = {"lstm-kf": 1.25, "lstm-ekf": 2.0}
MISSING = (0.0, 0.1, 0.3, 0.6)
MEAN_RUN = 25  # frames: the mean length of a run without a face


def missing_in_runs(fraction: float, generator: torch.Generator) -> torch.Tensor:
    """(BATCH, STEPS) bool, True where the frame has no face: runs of geometric length (mean MEAN_RUN frames, at
    most 250) at random places in each sequence until `fraction` of its frames are covered."""
    missing = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    for row in range(BATCH):
        while float(missing[row].float().mean()) < fraction:
            length = min(250, 1 + int(torch.empty(1).geometric_(1 / MEAN_RUN, generator=generator)))
            start = int(torch.randint(0, STEPS - length, (1,), generator=generator))
            missing[row, start : start + length] = True
    return missing


def time_once(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_side_by_side(steps: list[tuple[Callable[[], None], int]], device: torch.device) -> list[float]:
    """Median seconds of each (step, repeats), the repeats interleaved round by round (configuration 1, 2, ..., then
    1, 2, ... again) so that a change in the machine's load weighs on every configuration alike."""
    for step, _ in steps:
        step()  # warm-up (and loading the cached compiled kernels)
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(max(count for _, count in steps)):
        for k, (step, count) in enumerate(steps):
            if round_ < count:
                times[k].append(time_once(step, device))
    return [statistics.median(t) for t in times]


DEVICE = torch.device("cpu")


def model(kind: str, method: str = "auto") -> AffectModel:
    torch.manual_seed(0)
    config = ModelConfig(input_dim=FEATURES, model=kind, align="adaptive", filter_method=method)
    return AffectModel(config).to(DEVICE)


def run(threads: int, repeats: int, skip_reference: bool) -> list[tuple[str, str, float]]:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, STEPS, FEATURES, generator=generator)
    inputs = {}
    for fraction in MISSING:
        features = x.clone()
        features[missing_in_runs(fraction, generator)] = float("nan")
        inputs[fraction] = features.to(DEVICE)
    x = x.to(DEVICE)

    def front_end_only(m: AffectModel) -> Callable[[], None]:
        def step() -> None:
            m.zero_grad()
            o, _ = m.frontend(x, None)
            o.square().mean().backward()

        return step

    def whole(m: AffectModel, features: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            m.zero_grad()
            m(features).y.square().mean().backward()

        return step

    configurations: list[tuple[str, str, Callable[[], None], int]] = [
        ("front-end alone (FF + LSTM + FC)", "", front_end_only(model("lstm-kf")), repeats),
    ]
    for kind, name in (("lstm-kf", "LSTM-KF-AA"), ("lstm-ekf", "LSTM-EKF-AA")):
        for fraction, features in inputs.items():
            label = f"{name} (compiled), {fraction:.0%} missing"
            configurations.append((label, kind, whole(model(kind), features), repeats))
    configurations += [
        ("LSTM-KF-AA, parallel scan (GPU path)", "", whole(model("lstm-kf", "scan"), x), repeats),
        ("LSTM-KF-AA, parallel scan, 30% missing", "", whole(model("lstm-kf", "scan"), inputs[0.3]), repeats),
    ]
    if not skip_reference:
        configurations += [
            ("LSTM-KF-AA, step-by-step reference", "", whole(model("lstm-kf", "reference"), x), 1),
            ("LSTM-EKF-AA, step-by-step reference", "", whole(model("lstm-ekf", "reference"), x), 1),
        ]
    seconds = time_side_by_side([(step, count) for _, _, step, count in configurations], DEVICE)
    return [(name, target, s) for (name, target, _, _), s in zip(configurations, seconds, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow step-by-step loops")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU paths: KF scan, EKF via the host)")
    parser.add_argument("--flush-denormals", action="store_true", help="flush denormal floats to zero (x86 FTZ/DAZ)")
    args = parser.parse_args()
    retain_freed_memory()  # as the affect CLI and the Ray workers do
    if args.flush_denormals and not torch.set_flush_denormal(True):
        print("this CPU cannot flush denormals; measuring without")
    global DEVICE
    DEVICE = torch.device(args.device)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.system()}, load average {load}; "
        f"torch {torch.__version__}, numba {numba.__version__}"
    )
    if DEVICE.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEVICE)}")
    flush = "denormals flushed to zero" if args.flush_denormals else "denormals kept"
    print(
        f"batch {BATCH} x {STEPS} x {FEATURES} float32 on {DEVICE}, forward+backward, median of {args.repeats}, {flush}"
    )
    for threads in args.threads:
        results = run(threads, args.repeats, args.skip_reference)
        base = results[0][2]
        print(f"\ntorch threads: {torch.get_num_threads()}")
        print(f"{'configuration':42s} {'seconds':>9s} {'x front-end':>12s}  target")
        for name, target, seconds in results:
            goal = f"<= {TARGETS[target]:.2f}x" if target else ""
            print(f"{name:42s} {seconds:9.3f} {seconds / base:12.2f}  {goal}")


if __name__ == "__main__":
    main()
