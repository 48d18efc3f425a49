"""The data plane against corpus size: ingest, score (single process and Ray Data) and evaluate generated corpora of
N videos x 250 frames, with seconds per frame, peak RSS of each stage and the table's object count, on local disk or
on a local SeaweedFS S3 server.

Each stage runs in its own subprocess (``--stage``), so its peak resident set size is its own (``os.wait4``). The
videos are generated from their index (16 features, a run of frames without a face, labels on train and dev) and
written with :func:`affect_core.data.dataset.write_videos`, which asks for each video when it writes it: the stage
measures the table writer, not an input-layout reader. Scoring uses a randomly initialised LSTM-KF with adaptive
alignment (untrained: the cost is the same); the I/O floor is the same pipeline with a stand-in model that returns
zeros, and the model stage times that model alone on the scorer's batches (the videos read in between, untimed). The
bound stage is the floor's pipeline with a stand-in model that spends the model stage's CPU seconds per frame in
compiled code that does not hold the GIL: what the scorer would take if its reading, writing and model overlapped
perfectly on this machine's cores, the least a scorer of this model can take here. Ray Data runs on an in-process
Ray with 2 CPUs and a pool of 2 actors of 1 CPU; its start-up is reported apart: Ray's, and the actors' up to the
driver's first results (their frames are left out of the rate).

    python -m benchmarks.scale_curve [--sizes 1000 10000] [--store local|s3]
        [--stages ingest floor model bound score ray evaluate]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FRAMES = 250
FEATURES = 16
FPS = 25.0


def make_video(index: int, n: int) -> Any:
    from affect_core.data.records import Video

    third = max(1, n // 3)
    split = ("train", "dev", "test")[min(2, index // third)]
    rng = np.random.default_rng(index)
    features = rng.normal(size=(FRAMES, FEATURES)).astype(np.float32)
    features[40:55] = np.nan
    labels = None if split == "test" else np.tanh(np.cumsum(rng.normal(size=FRAMES)) / 20).astype(np.float32)
    time_s = np.arange(FRAMES) / FPS
    return Video(f"{split}_{index}", split, features, time_s, FPS, arousal=labels, valence=labels)


def stage_ingest(url: str, n: int, options: dict | None) -> dict[str, Any]:
    from affect_core.data import dataset as ds
    from affect_core.data.records import Corpus

    names = [f"f{i}" for i in range(FEATURES)]
    corpus = Corpus([], names, FPS, feature_set="features")
    header = ds.header_hash(names, [{"name": "features", "start": 0, "stop": FEATURES}], FPS)
    corpus.metadata["feature_sets"] = json.dumps([{"name": "features", "start": 0, "stop": FEATURES}])
    metadata = ds.dataset_metadata(corpus, header, "generated", "benchmarks.scale_curve")
    hashes, splits = {}, {}
    for index in range(n):
        video = make_video(index, n)
        hashes[video.video_id], splits[video.video_id] = ds.video_hash(video), video.split
    ids = {f"{splits_id.split('_')[0]}_{i}": i for i, splits_id in enumerate(hashes)}
    ds.write_videos(
        [],
        url,
        metadata=metadata,
        storage_options=options,
        video_hashes=hashes,
        splits=splits,
        load=lambda video_id: make_video(ids[video_id], n),
    )
    return {"frames": n * FRAMES}


def make_bundle(path: str, options: dict | None) -> None:
    import torch

    from affect_core.artifact import ModelBundle, TrainedModel, save_bundle
    from affect_core.config import FeatureConfig, ModelConfig, RunConfig
    from affect_core.features import fit_feature_transform
    from affect_core.model import AffectModel

    torch.manual_seed(0)
    transform = fit_feature_transform([make_video(i, 30).features for i in range(30)], FeatureConfig())
    config = RunConfig()
    config.model = ModelConfig(
        model="lstm-kf", align="adaptive", dimension="joint", input_dim=transform.output_dim, window=30
    )
    model = AffectModel(config.model).eval()
    names = [f"f{i}" for i in range(FEATURES)]
    save_bundle(ModelBundle([TrainedModel("m", model, transform, config)], names, "features", FPS), path, options)


def stage_score(url: str, out: str, model: str, options: dict | None) -> dict[str, Any]:
    from affect_core.scoring import score_dataset

    cpu = time.process_time()
    result = score_dataset(url, model, out, storage_options=options, progress=False)
    return {"frames": result.frames, "cpu_s": time.process_time() - cpu}


def spin(iterations: int) -> float:
    """Compiled arithmetic for ``iterations`` steps, without the GIL (the bound stage's stand-in model)."""
    return _spin_kernel()(iterations)


def spin_rate() -> float:
    """spin() iterations per CPU second on this machine (compiled and measured before the work is timed)."""
    spin(1000)
    started = time.thread_time()
    spin(20_000_000)
    return 20_000_000 / (time.thread_time() - started)


@functools.cache
def _spin_kernel() -> Any:
    from numba import njit

    @njit(nogil=True)
    def kernel(iterations: int) -> float:
        x = 0.0
        for _ in range(iterations):
            x = x * 0.999999 + 1.0
        return x

    return kernel


def stage_floor(url: str, out: str, options: dict | None, us_per_frame: float = 0.0) -> dict[str, Any]:
    """The scorer's pipeline with a stand-in model that returns zeros after spending ``us_per_frame`` microseconds of
    CPU per frame without the GIL (0: the I/O floor; the model's CPU per frame: the bound stage)."""
    from affect_core.data.dataset import dataset_info, iter_videos
    from affect_core.scoring import score_videos

    iterations = spin_rate() * us_per_frame * 1e-6 if us_per_frame > 0 else 0.0

    class Zeros:
        model_id, feature_set, feature_names = "zeros", "features", [f"f{i}" for i in range(FEATURES)]

        @staticmethod
        def predict_batch(features: list[np.ndarray]) -> list[dict]:
            if iterations:
                spin(int(iterations * sum(len(f) for f in features)))
            return [
                {"arousal": (np.zeros(len(f), np.float32),) * 2, "valence": (np.zeros(len(f), np.float32),) * 2}
                for f in features
            ]

    info = dataset_info(url, storage_options=options)
    started = time.perf_counter()
    frames = sum(v.num_frames for v in iter_videos(url, storage_options=options))
    read_s = time.perf_counter() - started
    cpu = time.process_time()
    result = score_videos(
        Zeros(),
        iter_videos(url, storage_options=options),
        out,
        feature_names=Zeros.feature_names,
        storage_options=options,
        progress=False,
        dataset_url=info.url,
        dataset_version=info.version,
        predict=Zeros.predict_batch,
    )
    return {"frames": frames, "read_only_s": read_s, "pipeline_s": result.seconds, "cpu_s": time.process_time() - cpu}


def stage_model(url: str, model: str, options: dict | None) -> dict[str, Any]:
    """The model alone: every video predicted in the scorer's batches on the scorer's torch threads, timed around the
    predictions only (the videos are read in between, untimed). The first batch's seconds, which hold the compiled
    kernels' loading, are reported apart as well."""
    import torch

    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import iter_videos
    from affect_core.scoring import model_threads, predict_tracks, video_batches

    bundle = load_bundle(model, options, device="cpu")
    torch.set_num_threads(model_threads())
    seconds = cpu = 0.0
    first = None
    frames = 0
    for batch in video_batches(iter_videos(url, storage_options=options)):
        started, started_cpu = time.perf_counter(), time.thread_time()
        predict_tracks(bundle, [v.features for v in batch])
        seconds += time.perf_counter() - started
        cpu += time.thread_time() - started_cpu
        first = seconds if first is None else first
        frames += sum(v.num_frames for v in batch)
    return {"frames": frames, "model_s": seconds, "cpu_s": cpu, "first_batch_s": first or 0.0}


def stage_ray(url: str, out: str, model: str, options: dict | None) -> dict[str, Any]:
    from tuning.cluster import ensure_ray
    from tuning.score import score_dataset

    started = time.perf_counter()
    ensure_ray(num_cpus=2, storage_options=options)
    startup = time.perf_counter() - started
    result = score_dataset(url, model, out, storage_options=options, cpus_per_actor=1.0, actors=2, min_actors=2)
    return {
        "frames": result.frames,
        "startup_s": startup,
        "actors_s": result.startup_seconds,
    }


def stage_evaluate(url: str, out: str, options: dict | None) -> dict[str, Any]:
    from affect_core.data.dataset import iter_videos
    from affect_core.scoring import evaluate_predictions, read_predictions

    store = read_predictions(out, options)
    evaluate_predictions(store, iter_videos(url, video_ids=store.video_ids(), storage_options=options))
    return {"frames": store.frames()}


class MemoryPeaks:
    """Samples the process's private (RssAnon) and shared (RssShmem: for a Ray driver, the object store's pages it has
    mapped) resident memory every 0.1 s until :meth:`stop`, which returns their peaks in MB."""

    def __init__(self) -> None:
        import threading

        self.private = self.shared = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        self.private = max(self.private, int(fields.get("RssAnon", "0 kB").split()[0]) / 1024)
        self.shared = max(self.shared, int(fields.get("RssShmem", "0 kB").split()[0]) / 1024)

    def _run(self) -> None:
        while not self._stopped.wait(0.1):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stopped.set()
        self._thread.join()
        self._sample()
        return {"private_mb": self.private, "shared_mb": self.shared}


def run_stage(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one stage in a subprocess; its result plus wall seconds and peak RSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scale_curve", *args], stdout=subprocess.PIPE, env={**os.environ, **env}
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {args} failed")
    result = json.loads(output.strip().splitlines()[-1])
    result.update({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024})
    return result


def object_count(url: str, options: dict | None) -> tuple[int, int]:
    """(data files, all objects) under ``url``."""
    from affect_core.storage import resolve

    loc = resolve(url, options)
    found = loc.fs.find(loc.path)
    data = [p for p in found if p.endswith(".parquet") and "_delta_log" not in p]
    return len(data), len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument(
        "--stages", nargs="+", default=["ingest", "floor", "model", "bound", "score", "ray", "evaluate"]
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--us-per-frame", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = json.loads(os.environ["SCALE_CURVE_OPTIONS"]) if os.environ.get("SCALE_CURVE_OPTIONS") else None
    if args.stage:
        from affect_core.runtime import limit_malloc_arenas, retain_freed_memory

        limit_malloc_arenas()  # the process settings of the CLI (affect_cli.main) and the Ray scoring actors
        retain_freed_memory()
        stages = {
            "ingest": lambda: stage_ingest(args.url, args.n, options),
            "floor": lambda: stage_floor(args.url, args.out, options),
            "bound": lambda: stage_floor(args.url, args.out, options, us_per_frame=args.us_per_frame),
            "model": lambda: stage_model(args.url, args.model, options),
            "score": lambda: stage_score(args.url, args.out, args.model, options),
            "ray": lambda: stage_ray(args.url, args.out, args.model, options),
            "evaluate": lambda: stage_evaluate(args.url, args.out, options),
            "bundle": lambda: make_bundle(args.model, options) or {},
        }
        import affect_core.data.dataset  # noqa: F401 - imports are not the stage's work
        import affect_core.scoring  # noqa: F401

        peaks = MemoryPeaks()
        started = time.perf_counter()
        result = stages[args.stage]()
        result["work_s"] = time.perf_counter() - started
        result.update(peaks.stop())
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="scale-curve-"))
    env: dict[str, str] = {}
    server = None
    if args.store == "s3":
        try:
            from affect_services import SeaweedS3  # type: ignore[import-not-found]
        except ImportError:
            from affect_cli.services import SeaweedS3
        server = SeaweedS3(work / "s3")
        server.start()
        server.create_bucket("bench")
        options = server.storage_options()
        env = {**server.env(), "SCALE_CURVE_OPTIONS": json.dumps(options)}
        base = "s3://bench"
    else:
        base = str(work)
    try:
        model = f"{base}/model"
        run_stage(["--stage", "bundle", "--model", model], env)
        print(f"store {args.store}; videos of {FRAMES} frames x {FEATURES} features; {os.cpu_count()} CPUs")
        print("| videos | stage | work s | us/frame | peak RSS MB | data files | objects | notes |")
        print("|---:|---|---:|---:|---:|---:|---:|---|")
        for n in args.sizes:
            url, preds = f"{base}/ds{n}", f"{base}/pred{n}"
            floor_s = model_us = 0.0
            for stage in args.stages:
                out = {"floor": f"{base}/floor{n}", "bound": f"{base}/bound{n}", "ray": f"{base}/ray{n}"}.get(
                    stage, preds
                )
                if stage == "bound" and not model_us:
                    raise SystemExit("the bound stage runs after the model stage (it spends the model's CPU)")
                if stage == "evaluate" and "score" not in args.stages:
                    out = f"{base}/floor{n}"  # evaluate the floor's predictions (zeros) when there is no score run
                stage_args = ["--stage", stage, "--url", url, "--out", out, "--model", model, "--n", str(n)]
                result = run_stage([*stage_args, "--us-per-frame", str(model_us)], env)
                counted = object_count(url if stage == "ingest" else out, options)
                notes = f"process {result['seconds']:.1f} s"
                work_s = result["work_s"]
                if stage == "floor":
                    notes += f"; read only {result['read_only_s']:.2f} s"
                    work_s = floor_s = result["pipeline_s"]
                if stage == "model":
                    notes += f"; first batch {result['first_batch_s']:.2f} s"
                    work_s = result["model_s"]
                    model_us = 1e6 * result["cpu_s"] / max(1, result["frames"])
                if stage == "bound":
                    work_s = result["pipeline_s"]
                    notes += f"; stand-in of {model_us:.2f} us CPU a frame without the GIL"
                    notes += f"; {work_s / floor_s:.2f}x the floor" if floor_s else ""
                if stage == "score" and floor_s:
                    notes += f"; {work_s / floor_s:.2f}x the floor"
                if "cpu_s" in result:  # CPU seconds of the work, over all its threads (2 cores: at most 2 a second)
                    notes += f"; CPU {result['cpu_s']:.2f} s"
                if stage == "ray":
                    notes += (
                        f"; driver: private peak {result.get('private_mb', 0):.0f} MB, object-store pages mapped "
                        f"{result.get('shared_mb', 0):.0f} MB"
                    )
                    notes += (
                        f"; apart: Ray start-up {result['startup_s']:.1f} s, actors up to their first call "
                        f"{result['actors_s']:.1f} s"
                    )
                    work_s = result["work_s"] - result["startup_s"] - result["actors_s"]
                frames = max(1, result["frames"])
                print(
                    f"| {n} | {stage} | {work_s:.2f} | {1e6 * work_s / frames:.2f} | {result['peak_rss_mb']:.0f} | "
                    f"{counted[0]} | {counted[1]} | {notes} |",
                    flush=True,
                )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
