"""Connecting to Ray and giving Ray a place for its own state.

``ensure_ray`` joins the cluster named by ``RAY_ADDRESS`` when it is set and otherwise starts Ray in this process
(``ray.init(num_cpus=...)``), every one of its servers bound to 127.0.0.1; it is idempotent.

Loopback: Ray binds its servers (GCS, raylet, object manager, agents) to every interface unless its node address is
127.0.0.1, and it turns a given 127.0.0.1 into the machine's outward address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's local-only mode) was set when ray was imported. So importing this module
without ``RAY_ADDRESS`` sets that variable (the drivers in ``tuning`` import ray only inside their functions, after this
module); the workers inherit it. A process that imported ray before gets Ray's cached value corrected by
:func:`ensure_ray` before it starts Ray. Joining a cluster (``RAY_ADDRESS``) leaves all of this alone.

The S3 settings the workers need (endpoint and keys) travel to
every worker as ``runtime_env`` environment variables, never inside task arguments, Tune configs or pickled
filesystems, so they are not written to experiment files or logs. Only variable names are ever logged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from affect_core.errors import AffectError
from affect_core.storage import resolve, s3_storage_options

logger = logging.getLogger(__name__)

# Environment variables the workers need to reach S3 the same way the driver does.
S3_ENV_VARS = (
    "AFFECT_S3_ENDPOINT",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
# s3fs storage options that are really credentials or the endpoint: sent as environment variables instead.
_OPTION_ENV = {
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
    "endpoint_url": "AFFECT_S3_ENDPOINT",
}
HEAD_NODE_RESOURCE = "node:__internal_head__"
LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault(LOCAL_ONLY_ENV, "0")


@dataclass(frozen=True)
class ClusterInfo:
    """What the connected Ray offers. address: the ``RAY_ADDRESS`` joined, or "in-process"."""

    address: str
    nodes: int
    cpus: float
    gpus: float
    has_head_resource: bool

    @property
    def has_gpus(self) -> bool:
        return self.gpus > 0


def worker_env(storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """S3 environment for the workers: this process's S3 variables, overridden by credentials or an endpoint
    given in ``storage_options`` (s3fs names: key, secret, token, endpoint_url, client_kwargs.endpoint_url)."""
    env = {name: os.environ[name] for name in S3_ENV_VARS if os.environ.get(name)}
    options = dict(storage_options or {})
    endpoint = (options.get("client_kwargs") or {}).get("endpoint_url")
    if endpoint:
        env["AFFECT_S3_ENDPOINT"] = str(endpoint)
    region = (options.get("client_kwargs") or {}).get("region_name")
    if region:
        env.setdefault("AWS_DEFAULT_REGION", str(region))
    for option, name in _OPTION_ENV.items():
        if options.get(option):
            env[name] = str(options[option])
    return env


def shareable_storage_options(storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``storage_options`` without credentials and endpoint (those reach workers through :func:`worker_env`),
    safe to put into task arguments and Tune configs."""
    options = {k: v for k, v in dict(storage_options or {}).items() if k not in _OPTION_ENV}
    client_kwargs = {
        k: v for k, v in dict(options.pop("client_kwargs", None) or {}).items() if k not in ("endpoint_url",)
    }
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def ensure_ray(*, num_cpus: int | None = None, storage_options: Mapping[str, Any] | None = None) -> ClusterInfo:
    """Connect to Ray once: ``RAY_ADDRESS`` if set, else an in-process Ray with ``num_cpus`` CPUs (default:
    all). The S3 environment (:func:`worker_env`) becomes the job's ``runtime_env``. Also exports it to this
    process, so that the driver's own S3 clients (pyarrow for Ray's storage) find the same credentials.

    If Ray is already initialised, it is used as it is; a missing S3 variable is reported by name.
    """
    import ray

    env = worker_env(storage_options)
    for name, value in env.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        current = dict((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
        missing = sorted(name for name in env if name not in current and name not in os.environ)
        if missing:
            logger.warning("Ray was initialised without %s; workers may not reach S3", ", ".join(missing))
        return cluster_info()
    runtime_env = {"env_vars": env} if env else None
    address = os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise AffectError(
            f"RAY_ADDRESS={address}: a Ray job server address; work reaches it as a Ray job (the affect commands and "
            "flows submit one), not by joining the cluster from here"
        )
    if address:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        _local_only()
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            runtime_env=runtime_env,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address=LOOPBACK,
        )
    info = cluster_info()
    logger.info("Ray at %s: %d node(s), %g CPU, %g GPU", info.address, info.nodes, info.cpus, info.gpus)
    return info


def _local_only() -> None:
    """Ray's local-only mode for the Ray about to start in this process (see the module docstring)."""
    os.environ[LOCAL_ONLY_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", False):
        constants.ENABLE_RAY_CLUSTER = False  # read when ray was imported, before the variable was set


def wait_for_capacity(request: Mapping[str, float], *, what: str, timeout_s: float, poll_s: float = 1.0) -> None:
    """Return once some node of the cluster can hold ``request`` (what one unit of work asks for: one seed's worker,
    one trial, one scoring actor), whatever is busy now. While none can, the request is posted to the autoscaler
    (``ray.autoscaler.sdk.request_resources``) so that an autoscaling cluster adds such a node; after ``timeout_s``
    seconds without one, an AffectError names the request, ``what`` sets it, and the largest node there is (instead
    of waiting forever for a node a fixed cluster will never have)."""
    import time

    import ray
    from ray.autoscaler.sdk import request_resources

    wanted = {name: float(amount) for name, amount in request.items() if amount > 0}
    deadline = time.monotonic() + timeout_s
    posted = False
    while True:
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        if any(all(node.get(name, 0.0) >= amount for name, amount in wanted.items()) for node in nodes):
            if posted:
                request_resources(bundles=[])
            return
        if time.monotonic() >= deadline:
            if posted:
                request_resources(bundles=[])
            largest = {name: max((node.get(name, 0.0) for node in nodes), default=0.0) for name in wanted}
            raise AffectError(
                f"Ray: no node can hold {what} ({_resources_text(wanted)}); the largest node has "
                f"{_resources_text(largest)} and none was added within {timeout_s:g} s; ask for less or add nodes "
                "(an autoscaler adds them when it can)"
            )
        if not posted:
            request_resources(bundles=[wanted])
            posted = True
        time.sleep(poll_s)


def _resources_text(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items())


def one_worker_trainer(train_loop: Any, **kwargs: Any) -> Any:
    """A Ray Train run of one worker (one seed, one trial) with no torch process group: a ``TorchTrainer`` would
    start a process group of one whose TCP store listens on every interface of the node. ``kwargs`` are
    ``train_loop_config``, ``scaling_config`` and ``run_config`` as for any Ray Train V2 trainer."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer(train_loop, **kwargs)


def cluster_info() -> ClusterInfo:
    """Nodes, CPUs and GPUs of the connected Ray (alive nodes only)."""
    import ray

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        address=os.environ.get("RAY_ADDRESS") or "in-process",
        nodes=len(nodes),
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
        has_head_resource=HEAD_NODE_RESOURCE in resources,
    )


def shutdown_ray() -> None:
    """Disconnect from Ray: an in-process Ray stops; a cluster joined by address is left running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def current_node() -> str:
    """The Ray node id of the calling worker (hex), recorded in results as the node a seed ran on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def driver_resources(info: ClusterInfo) -> dict[str, float]:
    """Resources of a Ray Train driver (a Tune trial that only launches and watches its Train run): no CPU,
    and pinned to the head node where the cluster has one, so that losing a worker node does not lose the
    drivers that would retry its seeds (Ray Train's recommendation for fault tolerance)."""
    resources = {"CPU": 0.0}
    if info.has_head_resource:
        resources[HEAD_NODE_RESOURCE] = 0.001
    return resources


def ray_storage(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig`` / ``ray.tune.RunConfig`` at ``url``.

    A local path is used as it is (every node must see it: one machine or a shared disk). ``s3://`` gets a
    ``pyarrow.fs.S3FileSystem`` with the endpoint made explicit and no keys inside (they come from the
    environment on every node, so that no secret is pickled into Ray's experiment state).
    """
    loc = resolve(url, storage_options)
    if loc.is_local:
        return loc.path, None
    if loc.protocol in ("s3", "s3a"):
        import pyarrow.fs as pafs

        options = s3_storage_options(storage_options)
        endpoint = (options.get("client_kwargs") or {}).get("endpoint_url")
        kwargs: dict[str, Any] = {}
        if endpoint:
            parsed = urlparse(str(endpoint))
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return loc.path, pafs.S3FileSystem(**kwargs)
    if loc.protocol == "memory":
        raise AffectError(
            f"{loc.display()}: memory:// is private to one process; Ray runs need storage every node can "
            "reach (a local path on one machine or a shared disk, or s3://)"
        )
    return loc.path, loc.arrow_filesystem()


PLACEMENT_GROUP_KEY = "placement_group"


def worker_placement_group() -> dict[str, str]:
    """``{"placement_group": <hex id>}`` of the calling Ray Train worker, added to its reports so that the
    driver can release the placement group of a trial that Tune stops (see :func:`release_stopped_trials`)."""
    import ray.util

    group = ray.util.get_current_placement_group()
    return {PLACEMENT_GROUP_KEY: group.id.hex()} if group is not None else {}


def release_stopped_trials() -> Any:
    """A Tune callback that removes a finished or stopped trial's Ray Train worker placement group.

    When Tune stops a trial (ASHA), it kills the trial's actor; the Train controller and workers die with it,
    but their placement group is released by Ray Train's cleaner only if the cluster serves the State API (the
    dashboard). Clusters without a dashboard would keep the stopped trial's CPUs reserved forever, so the
    driver removes the group itself, by the id the worker reported.
    """
    import ray
    from ray.tune import Callback
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    class ReleaseStoppedTrials(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._release(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._release(trial)

        @staticmethod
        def _release(trial: Any) -> None:
            group_hex = (trial.last_result or {}).get(PLACEMENT_GROUP_KEY)
            if not group_hex:
                return
            group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_hex)))
            try:
                if placement_group_table(group).get("state") not in (None, "REMOVED"):
                    remove_placement_group(group)
            except Exception as exc:  # noqa: BLE001 - already gone or the GCS is busy: nothing to release
                logger.debug("placement group %s not released: %s", group_hex, type(exc).__name__)

    return ReleaseStoppedTrials()
