"""The one Ray Train configuration of the project: what a seed's or a trial's Ray Train run asks for and where it
keeps its state, and the device its workers train on.

Multi-seed training (:mod:`tuning.train_seeds`) and the search (:mod:`tuning.tune`) both run each unit of work (a
seed group, a trial) as a Tune trial that drives one Ray Train run; :func:`worker_run` builds that run's trainer
(``ScalingConfig``, ``RunConfig``, ``FailureConfig``, ``CheckpointConfig`` around
:func:`tuning.cluster.one_worker_trainer`) from the :class:`TrainerSettings` the driver hands its trials, and
:func:`worker_device` is where a worker applies the device rule (:func:`affect_core.device.resolve_device`) with
the device Ray Train assigned it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuning.cluster import in_process_ray, one_worker_trainer


def worker_resources(cpus: float, gpus: float) -> dict[str, float]:
    """``resources_per_worker`` of one Ray Train worker: ``cpus`` CPUs and, when asked, ``gpus`` GPUs (a fraction
    shares a card)."""
    resources = {"CPU": float(cpus)}
    if gpus > 0:
        resources["GPU"] = float(gpus)
    return resources


@dataclass(frozen=True)
class TrainerSettings:
    """What every Ray Train run of one driver (a multi-seed training, a search) shares; handed to its trials.

    resources_per_worker: :func:`worker_resources`. storage_path / storage_filesystem: where Ray keeps the runs'
    state (:func:`tuning.cluster.ray_storage`). max_failures: restarts of a failed worker. workers: Train workers per
    run (data-parallel when more than one). watch_controller: Ray Train's placement-group cleaner on (off on the Ray
    the driver started in its own process: see :func:`tuning.cluster.one_worker_trainer`); decided where the driver
    builds the settings."""

    resources_per_worker: dict[str, float]
    storage_path: str
    storage_filesystem: Any = None
    max_failures: int = 0
    workers: int = 1
    watch_controller: bool = field(default_factory=lambda: not in_process_ray())

    @property
    def use_gpu(self) -> bool:
        return self.resources_per_worker.get("GPU", 0.0) > 0


def worker_run(
    train_loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    *,
    name: str,
    settings: TrainerSettings,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The Ray Train run named ``name`` of ``train_loop`` with ``loop_config``: ``settings.workers`` workers of
    ``settings.resources_per_worker`` each, its state under ``settings.storage_path``, a failed worker restarted
    ``settings.max_failures`` times from the last of its checkpoints (only the last is kept). ``name`` must stay the
    same across Tune's restarts of the trial (Train then restores its run)."""
    import ray.train

    return one_worker_trainer(
        train_loop,
        watch_controller=settings.watch_controller,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.use_gpu,
            resources_per_worker=settings.resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=settings.storage_path,
            storage_filesystem=settings.storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=list(callbacks) or None,
        ),
    )


def worker_device(requested: str | None) -> Any:
    """The torch device a Ray Train worker trains on: ``requested`` (``--device``) by the one device rule, "auto"
    taking the device Ray Train assigned this worker (its GPU when it was given one, else the CPU)."""
    import ray.train.torch

    from affect_core.device import resolve_device

    return resolve_device(requested, assigned=ray.train.torch.get_device())
