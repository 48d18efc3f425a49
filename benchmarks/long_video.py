"""Long videos: peak memory against the video's length, and frames/s with 1 and 2 Ray workers side by side.

A generated scene (affect_core.synth.video, a real face whose expression and place move smoothly, 25 fps, H.264) at a
small resolution (``--width`` x ``--height``, so that long videos are feasible on a laptop's cores) is written for each
length of ``--minutes``, frames generated and encoded in batches (the writer holds no whole video). A small LSTM-KF
video model is trained on generated clips first. Then, each measurement in a fresh process:

- memory: ``affect score`` (:func:`affect_core.video.score.score_video_root`) of the video in this process, through the
  long-video path (pieces of PIECE_FRAMES) and, for comparison, the one-pass path (the whole video's features, grid
  and predictions at once); the peak resident memory while scoring (Linux's VmHWM, reset when scoring starts; the
  imports made before are in it, the resident size then is printed beside) and the seconds;
- Ray: the longest video of ``--ray-minutes`` scored with its segments (``--segments`` of them) extracted by Ray tasks
  on an in-process Ray with 1 and 2 worker CPUs (``--workers``), the model run over them in order in the driver;
  decoded frames per second end to end.

    python -m benchmarks.long_video [--minutes 2 10 30] [--ray-minutes 10] [--workers 1 2] [--segments 4]
        [--width 96] [--height 64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 25.0
BATCH = 250  # frames generated and encoded at a time


def write_long_clip(path: Path, minutes: float, width: int, height: int) -> int:
    """A generated scene of ``minutes`` at FPS, written in batches of BATCH frames; returns its frame count."""
    import av

    from affect_core.synth.video import scene_frames

    frames = round(minutes * 60 * FPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(FPS)))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for start in range(0, frames, BATCH):
            times = np.arange(start, min(frames, start + BATCH)) / FPS
            for gray in scene_frames(times, width=width, height=height):
                frame = av.VideoFrame.from_ndarray(gray, format="gray").reformat(format="yuv420p")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames


def train_model(base: Path) -> Path:
    """A one-epoch LSTM-KF video model with a learned alignment, its video transform in its bundle (the one a run
    before left in ``base``, if any)."""
    if (base / "run" / "model" / "bundle.json").exists():
        return base / "run" / "model"
    from affect_core.config import load_run_config
    from affect_core.data.dataset import ingest, read_corpus
    from affect_core.experiment import train_run
    from affect_core.synth.video import VideoSynthConfig, write_video_corpus
    from affect_core.video.config import VideoConfig
    from affect_core.video.layout import LAYOUT
    from affect_core.video.stored import attach_to_bundle

    clips = VideoSynthConfig(videos_per_split=1, frames=40, width=160, height=96, no_face_share=0.0)
    fast = VideoConfig(face_size=32, wavelengths=(3.0, 6.0), orientations=2, blocks=2, pca_share=0.95)
    write_video_corpus(clips, base / "train-root")
    ingest(str(base / "train-root"), str(base / "dataset"), layout=LAYOUT, video_config=fast, progress=False)
    config = load_run_config(None, model="lstm-kf", align="adaptive", epochs=1)
    corpus = read_corpus(str(base / "dataset"), splits=None)
    model = train_run(corpus, str(base / "run"), config, dimension="arousal", seeds=1, progress=False)["model"]
    assert attach_to_bundle(str(base / "dataset"), model)
    return Path(model)


def measure(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from affect_core.video.score import score_video_root

    torch.set_num_threads(1)
    options: dict = {"long_video_frames": None if args.mode == "whole" else 1}
    ray = None
    if args.mode == "ray":
        import ray

        from tuning.video_extract import ray_mapper

        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", configure_logging=False)
        options["mapper"] = ray_mapper(segment_frames=args.segment_frames, cpus=1.0, max_in_flight=args.workers + 1)
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts again from here (Linux)
    start_mb = _status_mb("VmRSS")
    started = time.perf_counter()
    try:
        result = score_video_root(args.root, args.model, args.out, progress=False, **options)
    finally:
        if ray is not None:
            ray.shutdown()
    seconds = time.perf_counter() - started
    peak_mb = _status_mb("VmHWM")
    print(json.dumps({"frames": result.frames, "seconds": seconds, "peak_rss_mb": peak_mb, "start_mb": start_mb}))


def _status_mb(field: str) -> float:
    """A size of /proc/self/status (kB there) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_measure(root: Path, model: Path, out: Path, mode: str, **extra: int) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.long_video", "--measure", mode, str(root), str(model), str(out)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 10.0, 30.0])
    parser.add_argument("--whole-minutes", type=float, nargs="*", default=None, help="lengths also scored in one pass")
    parser.add_argument("--ray-minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="none: no Ray run")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--keep", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--measure", nargs=4, metavar=("MODE", "ROOT", "MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--segment-frames", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        args.mode, args.root, args.model, args.out = args.measure
        args.workers = args.workers[0]
        measure(args)
        return

    base = args.keep or Path(tempfile.mkdtemp(prefix="long-video-"))
    base.mkdir(parents=True, exist_ok=True)
    model = train_model(base)
    whole = args.minutes[:2] if args.whole_minutes is None else args.whole_minutes
    lengths = sorted({*args.minutes, *whole, *([args.ray_minutes] if args.workers else [])})
    roots = {}
    for minutes in lengths:
        root = base / f"m{minutes:g}"
        if (root / "videos" / "long.mp4").exists():
            roots[minutes] = (root, round(minutes * 60 * FPS))
            continue
        started = time.perf_counter()
        frames = write_long_clip(root / "videos" / "long.mp4", minutes, args.width, args.height)
        print(f"wrote {minutes:g} min ({frames} frames) in {time.perf_counter() - started:.0f} s", flush=True)
        roots[minutes] = (root, frames)

    print(f"\n{args.width}x{args.height} at {FPS:g} fps; peak resident memory of the scoring process (MB)")
    print("| length | frames | resident at start | pieces: peak MB | pieces: frames/s | one pass: peak MB |")
    print("|---|---|---|---|---|---|")
    for minutes in args.minutes:
        root, frames = roots[minutes]
        pieces = run_measure(root, model, base / f"out-pieces-{minutes:g}", "pieces")
        one = run_measure(root, model, base / f"out-whole-{minutes:g}", "whole") if minutes in whole else None
        one_mb = f"{one['peak_rss_mb']:.0f}" if one else "-"
        print(
            f"| {minutes:g} min | {frames} | {pieces['start_mb']:.0f} | {pieces['peak_rss_mb']:.0f} "
            f"| {frames / pieces['seconds']:.0f} | {one_mb} |",
            flush=True,
        )

    if not args.workers:
        return
    root, frames = roots[args.ray_minutes]
    segment = -(-frames // args.segments)
    print(f"\nRay: {args.ray_minutes:g} min ({frames} frames) in {args.segments} segments of {segment} frames")
    print("| Ray worker CPUs | seconds | frames/s | driver peak MB |")
    print("|---|---|---|---|")
    for workers in args.workers:
        got = run_measure(root, model, base / f"out-ray-{workers}", "ray", workers=workers, segment_frames=segment)
        print(f"| {workers} | {got['seconds']:.0f} | {frames / got['seconds']:.0f} | {got['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
