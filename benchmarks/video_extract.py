"""Video feature extraction speed per core at 640x360 against a decode-only floor, and memory against video length.

Generated clips of a real face (affect_core.synth.video) at 640x360, 25 fps, H.264. The process is pinned to one CPU
core (torch and FFmpeg threads included), so every figure is per core. Side by side in one run:

- decode only: frames decoded to grey (the floor no extraction can beat);
- detect + track: decoding plus the face cascade every ``detect_every`` frames, boxes interpolated;
- end to end: decode, detect/track, align, LGBP-TOP, PCA (fitted on the clip itself), per frame;
- memory: while extracting a clip and one ``--long-factor`` times longer (after a warm-up run), the peak resident
  memory above the start, with freed memory kept in the heap as the CLI and the Ray workers do (so the resident size
  is the heap's high-water mark), and tracemalloc's peak of the Python and numpy allocations.

    python -m benchmarks.video_extract [--frames 250] [--long-factor 4] [--repeats 2] [--detect-every 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import torch


def make_clip(path: Path, frames: int) -> None:
    from affect_core.synth.video import (
        VideoSynthConfig,
        _background,
        face_centre,
        face_height,
        face_image,
        render_face,
        render_frame,
        write_clip,
    )

    config = VideoSynthConfig(width=640, height=360)
    background = _background(360, 640, np.random.default_rng(0))
    face = face_image("astronaut")
    images = (
        render_frame(
            background,
            render_face(face, 0.5 * np.sin(i / 20), 0.5 * np.cos(i / 30), 1.0),
            face_height=face_height(config),
            centre=face_centre(config, i, 0.0),
        )
        for i in range(frames)
    )
    write_clip(path, list(images), 25.0)


class PeakMemory:
    """Peak resident memory of this process above its level at start, sampled every 5 ms."""

    def __enter__(self) -> PeakMemory:
        self._process = psutil.Process()
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6


def best_rate(run, frames: int, repeats: int) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process), best of ``repeats``. The process is pinned to
    one core, so its CPU time is what a dedicated core would take; on a shared machine the wall rate is lower."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return frames / min(wall), frames / min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--long-factor", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--detect-every", type=int, default=5)
    args = parser.parse_args()

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    from affect_core.runtime import retain_freed_memory

    retain_freed_memory()
    from affect_core.video.config import VideoConfig
    from affect_core.video.decode import decode_frames
    from affect_core.video.detect import FaceDetector, track_faces
    from affect_core.video.extract import extract_video, sample_video
    from affect_core.video.transform import fit_transform

    config = VideoConfig(detect_every=args.detect_every)
    with tempfile.TemporaryDirectory() as folder:
        short, long = Path(folder) / "short.mp4", Path(folder) / "long.mp4"
        make_clip(short, args.frames)
        make_clip(long, args.frames * args.long_factor)
        transform = fit_transform(sample_video(str(short), "short", config, every=1, limit=512), config)
        n = args.frames

        def decode() -> None:
            for _ in decode_frames(str(short), "short", threads=1):
                pass

        def detect() -> None:
            for _ in track_faces(
                decode_frames(str(short), "short", threads=1), FaceDetector(), detect_every=config.detect_every
            ):
                pass

        def extract() -> None:
            extract_video(str(short), "short", transform, device="cpu")

        extract()  # warm caches (kernel spectra, cascade)
        decode_rate = best_rate(decode, n, args.repeats)
        detect_rate = best_rate(detect, n, args.repeats)
        extract_rate = best_rate(extract, n, args.repeats)
        memory = {}
        for name, path, frames in (("short", short, n), ("long", long, n * args.long_factor)):
            tracemalloc.start()
            with PeakMemory() as peak:
                extract_video(str(path), name, transform, device="cpu")
            traced = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            memory[name] = (frames, peak.growth_mb, traced)

    print(f"# video extraction, 640x360 H.264 at 25 fps, one core ({platform.processor() or platform.machine()})")
    print(
        f"settings: face {config.face_size}px, {config.filters} Gabor filters, {config.blocks}x{config.blocks} blocks, "
        f"raw dim {config.raw_dim}, PCA {transform.output_dim} components, detect every {config.detect_every} frames"
    )
    print("| stage | frames/s per core (wall) | frames/s per core (CPU time) | share of decode-only (CPU) |")
    print("|---|---|---|---|")
    stages = (
        ("decode only (floor)", decode_rate),
        ("decode + detect/track", detect_rate),
        ("end to end", extract_rate),
    )
    for name, (wall, cpu) in stages:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {cpu / decode_rate[1]:.3f} |")
    rate = extract_rate[1]
    print(
        f"end to end: {1000 / rate:.1f} CPU ms per frame; real time at 25 fps on one core: "
        f"{'yes' if rate >= 25 else 'no'} ({rate / 25:.2f}x)"
    )
    print("| clip | frames | peak resident growth (MB) | tracemalloc peak (MB) |")
    print("|---|---|---|---|")
    for name, (frames, mb, traced) in memory.items():
        print(f"| {name} | {frames} | {mb:.1f} | {traced:.1f} |")
    ratio = memory["long"][2] / max(memory["short"][2], 1e-9)
    print(
        f"tracemalloc peak ratio long/short: {ratio:.2f} for {args.long_factor}x the frames (features alone: "
        f"{transform.output_dim * 4 * n * (args.long_factor - 1) / 1e6:.2f} MB more)"
    )


if __name__ == "__main__":
    main()
