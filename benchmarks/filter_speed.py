"""Forward+backward time of the model variants against their front-end alone, side by side in one run.

Batch: 9 sequences x 7501 frames x 168 features, float32, CPU. The front-end is the model's own (FF 29 + ReLU,
FF 16 + ReLU, LSTM 16, FC + tanh); the full variants add the filter (KF or EKF) and the adaptive alignment (AA,
window 100), i.e. LSTM-KF-AA and LSTM-EKF-AA exactly as a training step runs them (`AffectModel.causal` with the
frames with a face known from the host, `training_targets`, `bounded_state`). The loss is the mean square of the
output (of o_t for the front-end, of y_t for the variants). Each variant runs with 0%, 10%, 30% and 60% of the
frames without a face, in runs (stretches of 1 to 250 frames, geometric lengths of mean 25 frames = 1 s, as faces go
missing in video; NaN features, found and zeroed on the host as a training batch is made); the front-end alone runs
on the same inputs too.
Median of --repeats, with 1 and 2 torch threads, the repeats interleaved across the configurations (round by round)
so that the ratios hold on a shared machine whose load drifts; the step-by-step reference loops run once (they take
tens of seconds) unless --skip-reference.

Denormal floats are flushed to zero, as the affect CLI and the Ray workers do (`runtime.flush_denormals`);
--keep-denormals measures without (the LSTM's backward through stretches without a face then runs on denormals).

    python -m benchmarks.filter_speed [--repeats 7] [--threads 1 2] [--skip-reference] [--device cuda]
        [--keep-denormals]
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
from affect_core.model import AffectModel, bounded_state, host_face_rows
from affect_core.runtime import flush_denormals, retain_freed_memory

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


def run(threads: int, repeats: int, skip_reference: bool) -> list[tuple[str, str, float, float]]:
    """(configuration, target key, median seconds, seconds of the front-end alone on the same input) per row."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, STEPS, FEATURES, generator=generator)
    inputs: dict[float, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for fraction in MISSING:
        features = x.masked_fill(missing_in_runs(fraction, generator).unsqueeze(-1), float("nan")).numpy()
        # As a training batch is made: the frames with a face found on the host, the others zeroed (None: all).
        observed = host_face_rows(features)
        mask = None if observed is None else torch.from_numpy(observed).to(DEVICE)
        inputs[fraction] = (torch.from_numpy(features).to(DEVICE), mask)

    def front_end_only(m: AffectModel, features: torch.Tensor, observed: torch.Tensor | None) -> Callable[[], None]:
        def step() -> None:
            m.zero_grad()
            o, _ = m.frontend(features, observed)
            o.square().mean().backward()

        return step

    def whole(m: AffectModel, features: torch.Tensor, observed: torch.Tensor | None) -> Callable[[], None]:
        def step() -> None:  # a training step's model pass (affect_core.training.train_step)
            m.zero_grad()
            causal = m.causal(features, mask=observed, checked=True)
            z = causal.states[0]
            assert z is not None
            bounded_state(m.training_targets(z)).square().mean().backward()

        return step

    front = model("lstm-kf")
    configurations: list[tuple[str, str, Callable[[], None], int, float]] = []
    for fraction, (features, observed) in inputs.items():
        label = f"front-end alone, {fraction:.0%} missing"
        configurations.append((label, "", front_end_only(front, features, observed), repeats, fraction))
    for kind, name in (("lstm-kf", "LSTM-KF-AA"), ("lstm-ekf", "LSTM-EKF-AA")):
        for fraction, (features, observed) in inputs.items():
            label = f"{name} (compiled), {fraction:.0%} missing"
            configurations.append((label, kind, whole(model(kind), features, observed), repeats, fraction))
    configurations += [
        ("LSTM-KF-AA, parallel scan (GPU path)", "", whole(model("lstm-kf", "scan"), *inputs[0.0]), repeats, 0.0),
        ("LSTM-KF-AA, parallel scan, 30% missing", "", whole(model("lstm-kf", "scan"), *inputs[0.3]), repeats, 0.3),
    ]
    if not skip_reference:
        configurations += [
            ("LSTM-KF-AA, step-by-step reference", "", whole(model("lstm-kf", "reference"), *inputs[0.0]), 1, 0.0),
            ("LSTM-EKF-AA, step-by-step reference", "", whole(model("lstm-ekf", "reference"), *inputs[0.0]), 1, 0.0),
        ]
    seconds = time_side_by_side([(step, count) for _, _, step, count, _ in configurations], DEVICE)
    front_end = {fraction: seconds[k] for k, fraction in enumerate(MISSING)}
    return [
        (name, target, s, front_end[fraction])
        for (name, target, _, _, fraction), s in zip(configurations, seconds, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow step-by-step loops")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU paths: KF scan, EKF via the host)")
    parser.add_argument(
        "--keep-denormals", action="store_true", help="do not flush denormal floats to zero (the CLI flushes them)"
    )
    args = parser.parse_args()
    retain_freed_memory()  # as the affect CLI and the Ray workers do
    flushed = not args.keep_denormals and flush_denormals()
    global DEVICE
    DEVICE = torch.device(args.device)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.system()}, load average {load}; "
        f"torch {torch.__version__}, numba {numba.__version__}"
    )
    if DEVICE.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEVICE)}")
    flush = "denormals flushed to zero" if flushed else "denormals kept"
    print(
        f"batch {BATCH} x {STEPS} x {FEATURES} float32 on {DEVICE}, forward+backward, median of {args.repeats}, {flush}"
    )
    for threads in args.threads:
        results = run(threads, args.repeats, args.skip_reference)
        base = results[0][2]  # the front-end alone, every frame with a face
        print(f"\ntorch threads: {torch.get_num_threads()}")
        print(f"{'configuration':42s} {'seconds':>9s} {'x front-end':>12s} {'x same input':>13s}  target")
        for name, target, seconds, front_end in results:
            goal = f"<= {TARGETS[target]:.2f}x" if target else ""
            print(f"{name:42s} {seconds:9.3f} {seconds / base:12.2f} {seconds / front_end:13.2f}  {goal}")


if __name__ == "__main__":
    main()
