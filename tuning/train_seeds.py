"""Multi-seed training on Ray: one Ray Train run of one worker per seed (or seed stack), the runs spread
over the cluster's nodes by a Ray Tune ``Tuner`` whose trials are the seeds.

Each Tune trial is only a driver (no CPU, on the head node where there is one) that launches its seed's
one-worker Ray Train run; the Train worker reads the dataset from its URL and calls
:func:`affect_core.experiment.run_seed`, which checkpoints every epoch to ``RUN_URL/checkpoints/<seed>.pt``.
``FailureConfig(max_failures)`` restarts a failed worker (a killed node, say); the restarted worker sees the Ray
checkpoint it reported and resumes from the seed's last checkpoint. ``resume=True`` continues an interrupted run:
finished seeds are not trained again. The outputs are those of the single-process run
(:func:`affect_core.experiment.finish_run`), each result row naming the Ray node id its seed ran on.

Ray's own state (trial and Train run snapshots) goes to ``RUN_URL/_ray``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from affect_core.config import RunConfig
from affect_core.errors import AffectError
from affect_core.experiment import SeedTask, finish_run, group_seed_tasks, load_seed_outcome, plan_seed_tasks
from affect_core.storage import join, redact
from tuning.cluster import driver_resources, ensure_ray, ray_storage, shareable_storage_options
from tuning.trainer import TrainerSettings, worker_resources, worker_run

logger = logging.getLogger(__name__)

RAY_STATE_DIR = "_ray"


@dataclass(frozen=True)
class SeedResources:
    """What one seed's Train worker asks Ray for, whatever the cluster holds now: an autoscaler adds the nodes a
    request needs (fractional GPUs share a card)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def per_worker(self) -> dict[str, float]:
        """``resources_per_worker`` of a seed's Train worker."""
        return worker_resources(self.cpus, self.gpus)


def train_seeds(
    dataset_url: str,
    run_url: str,
    config: RunConfig,
    *,
    dimension: str,
    seeds: int,
    feature_set: str | None = None,
    resume: bool = False,
    resources: SeedResources | None = None,
    max_failures: int = 3,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    seeds_per_worker: int = 1,
    workers: int = 1,
    device: str = "auto",
) -> dict[str, str]:
    """Train ``seeds`` seeds per model in parallel on Ray and write the run's outputs under ``run_url``.

    With ``seeds_per_worker`` > 1 each Train run trains a group of that many seeds of one model together
    (:func:`affect_core.experiment.run_seeds`): fewer, busier workers. A restarted group continues from its
    checkpoint. With ``workers`` > 1 each group trains data-parallel on that many workers, each reading its part of
    the train, dev and test videos of one pinned dataset version and joined in a torch process group
    (:mod:`tuning.process_group`); the result is the model one worker would train. device: "auto" (the worker's GPU
    when it was given one), "cpu", "cuda" or any torch device, by :func:`tuning.trainer.worker_device`.

    Returns the URLs of results.parquet, summary.md and the model bundle (as ``finish_run``). Raises AffectError
    naming the seeds that did not finish (after ``max_failures`` retries each).
    """
    import ray.tune

    from affect_core.data import delta
    from affect_core.data.dataset import dataset_info
    from affect_core.storage import resolve

    resources = resources or SeedResources()
    if str(device).startswith("cuda") and not resources.gpus:
        raise AffectError("--device cuda on Ray needs GPUs for the workers: give --gpus-per-seed")
    cluster = ensure_ray(storage_options=storage_options)
    per_worker = resources.per_worker()
    tasks = plan_seed_tasks(config, dimension, range(seeds))
    groups = group_seed_tasks(tasks, seeds_per_worker)
    # The driver resolves the job's URLs once; the trials get URLs and shareable options and resolve on their side.
    options = dict(storage_options or {}) or None
    run = resolve(run_url, options)
    info = dataset_info(delta.resolve_versioned(dataset_url, options))
    storage_path, storage_fs = ray_storage(join(run_url, RAY_STATE_DIR), storage_options)
    settings = {
        "dataset_url": dataset_url,
        "version": info.version,
        "device": device,
        "run_url": run_url,
        "feature_set": feature_set,
        "resume": resume,
        "storage_options": shareable_storage_options(storage_options),
        "use_gpu": resources.gpus > 0,
        "threads": max(1, int(per_worker["CPU"])),
        "trainer": TrainerSettings(
            resources_per_worker=per_worker,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            max_failures=max_failures,
            workers=int(workers),
        ),
    }
    payloads = {
        "+".join(t.key for t in group): [{"name": t.name, "seed": t.seed, "config": t.config.to_dict()} for t in group]
        for group in groups
    }
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(seed_trial, tasks=payloads, settings=settings), driver_resources(cluster)
    )
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"seed_key": ray.tune.grid_search(list(payloads))},
        # Every seed asks at once; Ray runs as many as the cluster (as the autoscaler grows it) can hold.
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=len(payloads)),
        run_config=ray.tune.RunConfig(
            name=f"seeds-{uuid.uuid4().hex[:8]}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.tune.FailureConfig(max_failures=max_failures),
            verbose=1 if progress else 0,
        ),
    )
    results = tuner.fit()
    outcomes, missing = [], []
    for task in tasks:
        outcome = load_seed_outcome(task, run)
        if outcome is None:
            missing.append(task.key)
        else:
            outcomes.append(outcome)
    if missing:
        errors = [str(r.error).splitlines()[0] for r in results if r.error is not None]
        detail = f"; first error: {redact(errors[0])[:300]}" if errors else ""
        raise AffectError(
            f"{redact(run_url)}: seed(s) {', '.join(missing)} did not finish after {max_failures} retries"
            f"{detail}; run again with --resume to continue from their checkpoints"
        )
    return finish_run(outcomes, run, fps=info.fps)


def seed_trial(config: dict[str, Any], *, tasks: dict[str, dict[str, Any]], settings: dict[str, Any]) -> None:
    """Tune trial = Ray Train driver of one seed: a one-worker Ray Train run running :func:`seed_worker`."""
    import ray.tune

    key = config["seed_key"]
    trainer = worker_run(
        seed_worker,
        {"task": tasks[key], **{k: settings[k] for k in WORKER_SETTINGS}},
        # The trial id keeps the name stable across Tune's restarts of this trial (Train then restores its run)
        # and unique across runs.
        name=f"{key}-{ray.tune.get_context().get_trial_id()}",
        settings=settings["trainer"],
    )
    trainer.fit()


WORKER_SETTINGS = (
    "dataset_url",
    "version",
    "run_url",
    "feature_set",
    "resume",
    "storage_options",
    "threads",
    "device",
    "use_gpu",
)


def seed_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: train its seed or group of seeds with :func:`affect_core.experiment.run_seeds`, reporting
    every epoch.

    Each epoch's report carries a small Ray checkpoint (the epoch and the seed); a restarted worker finds it with
    ``ray.train.get_checkpoint()`` and resumes from the group's training checkpoint instead of starting again.
    """
    import ray.train
    import torch

    from affect_core.data import delta
    from affect_core.data.dataset import read_corpus
    from affect_core.experiment import run_seeds
    from affect_core.runtime import flush_denormals, retain_freed_memory
    from affect_core.storage import resolve
    from tuning.cluster import current_node
    from tuning.trainer import worker_device

    retain_freed_memory()
    flush_denormals()
    tasks = [
        SeedTask(p["name"], int(p["seed"]), RunConfig.from_dict(p["config"], where=f"seed {p['name']}"))
        for p in loop_config["task"]
    ]
    torch.set_num_threads(max(1, int(loop_config["threads"])))
    device = str(worker_device(loop_config["device"]))  # before any data is read: a bad --device fails at once
    options = loop_config["storage_options"] or None
    # This side of the Ray boundary resolves the URLs it was sent, once.
    dataset = delta.resolve_versioned(loop_config["dataset_url"], options)
    run = resolve(loop_config["run_url"], options)
    resume = bool(loop_config["resume"]) or ray.train.get_checkpoint() is not None
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    workers = None
    video_ids = None
    if world > 1:
        from affect_core.data.dataset import video_parts
        from affect_core.parallel import Workers
        from tuning.process_group import join_process_group

        join_process_group(use_gpu=bool(loop_config["use_gpu"]))
        workers = Workers()
        video_ids = []  # this worker's part of every split: each split cut into parts of about equal frames
        for split in ("train", "dev", "test"):
            parts = video_parts(dataset, splits=[split], version=loop_config["version"], parts=world)
            video_ids += parts[rank] if rank < len(parts) else []
    corpus = read_corpus(
        dataset, feature_set=loop_config["feature_set"], version=loop_config["version"], video_ids=video_ids
    )

    def report(task: SeedTask, record: Any) -> None:
        metrics = {"epoch": record.epoch, "dev_ccc": record.dev_ccc, "train_loss": record.train_loss}
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "progress.json"), "w") as handle:
                json.dump({**metrics, "seed": task.key}, handle)
            checkpoint = ray.train.Checkpoint.from_directory(directory) if rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint)

    run_seeds(
        tasks,
        corpus,
        run,
        resume=resume,
        on_epoch=report,
        node=current_node(),
        device=device,
        workers=workers,
    )
    if workers is not None:
        from tuning.process_group import leave_process_group

        leave_process_group()
