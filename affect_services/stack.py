"""The local stack: SeaweedFS S3, a Prefect server and a two-node Ray cluster with its job server, all on
127.0.0.1 under one directory, started by ``python -m affect_services up DIR`` (``make stack-up``).

The processes outlive the command that started them: ``DIR/state.json`` records every pid with its creation
time, ``DIR/env.sh`` holds the ``export NAME=value`` lines to reach the stack (also printed), and ``down``
stops exactly the recorded processes and checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from affect_services.prefect_server import PrefectServer
from affect_services.process import (
    Service,
    ServiceError,
    export_lines,
    private_file,
    same_process,
    terminate_tree,
    tree_pids,
)
from affect_services.ray_cluster import SCRATCH_PREFIX, RayCluster
from affect_services.seaweedfs import SeaweedS3, remove_weed_sockets

STATE_FILE = "state.json"
ENV_FILE = "env.sh"

logger = logging.getLogger(__name__)


class LocalStack:
    """SeaweedFS S3, a Prefect server and a two-node Ray cluster with its job server under one directory
    (``s3/``, ``prefect/``, ``ray/``), started together; :meth:`start` writes ``state.json`` (pids with
    creation times) and ``env.sh``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        worker_nodes: int = 1,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        bucket: str = "affect",
        ray_startup_timeout: float = 120.0,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.bucket = bucket
        self.s3 = SeaweedS3(self.directory / "s3")
        self.prefect = PrefectServer(self.directory / "prefect")
        self.ray = RayCluster(
            self.directory / "ray",
            head_cpus=head_cpus,
            worker_nodes=worker_nodes,
            worker_cpus=worker_cpus,
            job_server=True,
            startup_timeout=ray_startup_timeout,
        )

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def services(self) -> dict[str, Service]:
        """The services by name, in start order."""
        return {"s3": self.s3, "prefect": self.prefect, "ray": self.ray}

    def env(self) -> dict[str, str]:
        """The environment to export: S3 endpoint and keys, ``PREFECT_API_URL``, ``RAY_ADDRESS`` (the job
        server's http:// address), ``AFFECT_RAY_GCS_ADDRESS`` and Ray's auth."""
        return {**self.s3.env(), "AFFECT_S3_BUCKET": self.bucket, **self.prefect.env(), **self.ray.job_env()}

    def start(self) -> dict[str, str]:
        """Start all three (S3 and Prefect boot while Ray starts), create the bucket, write the state and env
        files; on any failure stop whatever was started. Returns :meth:`env`."""
        began = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, stat.S_IRWXU)
        try:
            for service in (self.s3, self.prefect):
                service.begin()
            # The Ray nodes, hence their workers and the job drivers of the job server, reach S3 with the keys in
            # their own environment: jobs never carry keys (tuning/cluster.py).
            self.ray.node_env = self.s3.env()
            self.ray.start()
            for service in (self.s3, self.prefect):
                service.wait_until_ready()
            self.s3.create_bucket(self.bucket)
        except BaseException:
            self.stop(quiet=True)
            raise
        state = {
            "version": 1,
            "started": time.time(),
            "startup_seconds": round(time.monotonic() - began, 2),
            "services": {name: {"processes": service.records()} for name, service in self.services().items()},
            "endpoints": {
                "s3": self.s3.endpoint_url,
                "prefect": self.prefect.api_url,
                "ray": self.ray.address,
                "ray_job_server": self.ray.job_server_url,
            },
            "scratch_dirs": [str(self.ray.scratch_dir)] if self.ray.scratch_dir else [],
            "weed_ports": self.s3.ports(),
        }
        private_file(self.directory / STATE_FILE, json.dumps(state, indent=2))
        env = self.env()
        private_file(self.directory / ENV_FILE, export_lines(env))
        return env

    def stop(self, quiet: bool = False) -> None:
        """Stop all three services (Ray first) and remove the state and env files."""
        errors = []
        for service in reversed(list(self.services().values())):
            try:
                service.stop()
            except ServiceError as error:
                errors.append(str(error))
        for name in (STATE_FILE, ENV_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        if errors and not quiet:
            raise ServiceError("; ".join(errors))


def read_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The state file written by :func:`stack_up` in ``directory``."""
    path = Path(directory) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ServiceError(f"{path}: no local stack recorded here (run `up` first)") from error
    except ValueError as error:
        raise ServiceError(f"{path}: not a valid state file ({error})") from error


def recorded_pids_alive(directory: str | os.PathLike[str]) -> list[int]:
    """Recorded pids of the stack in ``directory`` that are still alive (same process, not a reused pid), plus
    live members of the recorded process groups and descendants of the recorded leaders."""
    alive: set[int] = set()
    for service in read_state(directory)["services"].values():
        for record in service["processes"]:
            if same_process(record["pid"], record["create_time"]) is not None:
                alive.add(record["pid"])
            if record.get("leader"):
                alive.update(tree_pids(record["pid"], record["create_time"]))
    return sorted(alive)


def stack_up(directory: str | os.PathLike[str], **options: int) -> dict[str, str]:
    """Start the local stack in ``directory`` (see :class:`LocalStack`) and return the environment to export.
    The processes outlive the caller; :func:`stack_down` stops them."""
    directory = Path(directory)
    if (directory / STATE_FILE).exists():
        if recorded_pids_alive(directory):
            raise ServiceError(f"{directory}: a local stack is already running here (run `down` first)")
        (directory / STATE_FILE).unlink()
    began = time.monotonic()
    env = LocalStack(directory, **options).start()
    logger.info("local stack in %s started in %.1f s", directory, time.monotonic() - began)
    return env


def stack_down(directory: str | os.PathLike[str], grace: float = 35.0) -> list[int]:
    """Stop exactly the processes recorded by :func:`stack_up` in ``directory`` (Ray, then Prefect, then S3),
    check that none is left, and remove the state and env files. Returns the pids that were stopped."""
    directory = Path(directory)
    state = read_state(directory)
    stopped = recorded_pids_alive(directory)
    errors = []
    for name in reversed(list(state["services"])):
        records = state["services"][name]["processes"]
        others = [p for r in records if not r.get("leader") and (p := same_process(r["pid"], r["create_time"]))]
        for record in (r for r in records if r.get("leader")):
            try:
                terminate_tree(record["pid"], record["create_time"], grace=grace, extra=others)
            except ServiceError as error:
                errors.append(f"{name}: {error}")
        for process in others:
            with contextlib.suppress(psutil.Error):
                process.kill()
    left = recorded_pids_alive(directory)
    if errors or left:
        raise ServiceError(f"{directory}: processes still alive after stopping: {left} {'; '.join(errors)}")
    remove_weed_sockets(state.get("weed_ports", []))
    for scratch in map(Path, state.get("scratch_dirs", [])):
        if scratch.parent == Path(tempfile.gettempdir()) and scratch.name.startswith(SCRATCH_PREFIX):
            shutil.rmtree(scratch, ignore_errors=True)
    for name in (STATE_FILE, ENV_FILE):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return stopped
