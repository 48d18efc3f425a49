"""Connecting to Ray and giving Ray a place for its own state.

``ensure_ray`` joins the cluster named by ``RAY_ADDRESS`` when it is set and otherwise starts Ray in this process
(``ray.init(num_cpus=...)``), every one of its servers bound to 127.0.0.1; it is idempotent.

Loopback: Ray binds its servers (GCS, raylet, object manager, agents) to every interface unless its node address is
127.0.0.1, and it turns a given 127.0.0.1 into the machine's outward address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's local-only mode) was set when ray was imported. So importing this module
without ``RAY_ADDRESS`` sets that variable (the drivers in ``tuning`` import ray only inside their functions, after this
module); the workers inherit it. A process that imported ray before gets Ray's cached value corrected by
:func:`ensure_ray` before it starts Ray. Joining a cluster (``RAY_ADDRESS``) leaves all of this alone.

Credentials never travel with the work: Ray writes a job's ``runtime_env`` into every node's logs
(``runtime_env_agent.log``, readable by anyone on the machine) and shows it in its job table, so no key goes into a
``runtime_env``, a job entrypoint, a task argument, a Tune config or a pickled filesystem. Workers take S3 keys from
their node's environment, as the driver takes them from its own: an in-process Ray's workers inherit this process's
environment (so :func:`ensure_ray` exports keys given in storage options before it starts Ray); a cluster's nodes are
started with them (a Kubernetes Secret, the local stack's environment). The endpoint and region, which are no secret,
are exported the same way and never shipped either, so that a node's own endpoint (an in-cluster address) wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from affect_core.errors import AffectError
from affect_core.storage import redact, resolve, s3_storage_options

logger = logging.getLogger(__name__)

# Environment variables the workers need to reach S3 the way the driver does; only the first group is no secret.
S3_SETTING_VARS = ("AFFECT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")
S3_SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
S3_ENV_VARS = S3_SETTING_VARS + S3_SECRET_VARS
# s3fs storage options that are really credentials or the endpoint: they reach workers as environment variables.
_SECRET_OPTION_ENV = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}
_OPTION_ENV = {**_SECRET_OPTION_ENV, "endpoint_url": "AFFECT_S3_ENDPOINT"}
HEAD_NODE_RESOURCE = "node:__internal_head__"
LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_STARTED_IN_PROCESS = False  # set by ensure_ray when it starts Ray in this process

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
    """The S3 settings that are no secret (endpoint, region) for the workers: this process's, overridden by an
    endpoint or region given in ``storage_options`` (s3fs names: endpoint_url, client_kwargs.endpoint_url and
    client_kwargs.region_name). Keys are never part of it: see :func:`option_credentials`."""
    env = {name: os.environ[name] for name in S3_SETTING_VARS if os.environ.get(name)}
    options = dict(storage_options or {})
    client_kwargs = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or client_kwargs.get("endpoint_url")
    if endpoint:
        env["AFFECT_S3_ENDPOINT"] = str(endpoint)
    region = client_kwargs.get("region_name")
    if region:
        env.setdefault("AWS_DEFAULT_REGION", str(region))
    return env


def option_credentials(storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The keys given in ``storage_options`` (s3fs ``key``, ``secret``, ``token``) as the environment variables
    botocore reads (``AWS_ACCESS_KEY_ID``, ...)."""
    options = dict(storage_options or {})
    return {name: str(options[option]) for option, name in _SECRET_OPTION_ENV.items() if options.get(option)}


def _export_credentials(credentials: Mapping[str, str], *, ray_started: bool) -> None:
    """Put keys given in storage options into this process's environment, where an in-process Ray's workers find
    them. A cluster joined by address takes keys from its nodes' environment only: keys given otherwise are refused
    rather than silently not reaching its workers."""
    differing = sorted(name for name, value in credentials.items() if os.environ.get(name) != value)
    if not differing:
        return
    if os.environ.get("RAY_ADDRESS"):
        raise AffectError(
            "storage options: keys (key/secret/token) are not sent to Ray workers, which take S3 keys from their "
            f"node's environment; set {', '.join(differing)} in the environment of every Ray node (and of this "
            "process) instead"
        )
    if ray_started:
        logger.warning("Ray was started before %s was set; its workers may not reach S3", ", ".join(differing))
    for name in differing:
        os.environ[name] = credentials[name]


def _keep_keys_out_of_tune() -> None:
    """Stop Ray Tune from copying this process's AWS keys into every trial actor's ``runtime_env``, which Ray writes
    into the logs of every node (checked against the installed Ray, 2.60: ``ENV_VARS_TO_PROPAGATE`` in
    ray/tune/execution/class_cache.py, read each time a trainable is registered). The trials' workers read the keys
    from their node's environment like every other worker, so nothing is lost."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = {
        name for name in class_cache.ENV_VARS_TO_PROPAGATE if name not in (*S3_SECRET_VARS, "AWS_SECURITY_TOKEN")
    }


def shareable_storage_options(storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``storage_options`` without credentials and endpoint (those reach workers through their environment),
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
    all). The S3 settings (:func:`worker_env`) and any keys given in ``storage_options`` are exported to this
    process's environment first: the driver's own S3 clients (pyarrow for Ray's storage) read them there, and an
    in-process Ray's workers inherit them. Nothing is put into the job's ``runtime_env`` (see the module docstring).

    If Ray is already initialised, it is used as it is. Keys in ``storage_options`` with ``RAY_ADDRESS`` set are
    refused (AffectError): a cluster's workers take them from their nodes' environment.
    """
    global _STARTED_IN_PROCESS
    import ray

    _keep_keys_out_of_tune()
    _export_credentials(option_credentials(storage_options), ray_started=ray.is_initialized())
    for name, value in worker_env(storage_options).items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        return cluster_info()
    address = os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise AffectError(
            f"RAY_ADDRESS={address}: a Ray job server address; work reaches it as a Ray job (the affect commands and "
            "flows submit one), not by joining the cluster from here"
        )
    if address:
        join_cluster(address)
    else:
        _local_only()
        _STARTED_IN_PROCESS = True
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address=LOOPBACK,
        )
    info = cluster_info()
    logger.info("Ray at %s: %d node(s), %g CPU, %g GPU", info.address, info.nodes, info.cpus, info.gpus)
    return info


# What a driver refused by a cluster with token authentication must do (Ray 2.60: `ray start --head` turns it on and
# writes the token to ~/.ray/auth_token; a driver sends it only with RAY_AUTH_MODE=token).
AUTH_HINT = (
    "set RAY_AUTH_MODE=token and give this process the cluster's token: the token file ~/.ray/auth_token (where "
    "`ray start --head` writes it), a file named by RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN"
)
REACH_TIMEOUT_S = 10.0
_AUTH_MARKS = (
    "authentication",
    "auth token",
    "auth_token",
    "unauthenticated",
    "invalidauthtoken",
    "unauthorized",
    "401",
)


def join_cluster(address: str) -> None:
    """``ray.init(address=...)`` that fails fast with one line: an address where nothing answers within
    :data:`REACH_TIMEOUT_S` seconds (Ray itself would retry for minutes), a refused token, or any other failure to
    join, each as an AffectError naming ``RAY_ADDRESS``."""
    import ray

    check_reachable(address)
    with _stderr_held() as held:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - Ray raises its connection and auth failures as several types
            held.drop()
            raise connection_error(address, exc) from exc


class _HeldStderr:
    """What was written to file descriptor 2 while held; written out when released unless dropped."""

    def __init__(self) -> None:
        self.dropped = False

    def drop(self) -> None:
        self.dropped = True


@contextlib.contextmanager
def _stderr_held() -> Iterator[_HeldStderr]:
    """Hold back what is written to standard error (by Python or by Ray's C++ core) until the block ends: a driver
    that Ray refuses logs one warning a second while it retries for about 20 s, which the one-line error replaces.
    On success everything held is written out as it was."""
    import tempfile

    held = _HeldStderr()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real standard error (a captured test stream): nothing to hold
        yield held
        return
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield held
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not held.dropped:
                buffer.seek(0)
                os.write(2, buffer.read())


def check_reachable(address: str, *, what: str = "Ray cluster", timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Raise an AffectError unless something accepts a TCP connection at ``address`` (``host:port``,
    ``ray://host:port`` or ``http(s)://host:port``) within ``timeout_s`` seconds. Addresses without a port
    (``auto``) are left to Ray."""
    import socket

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        return
    if port is None and parsed.scheme in ("http", "https"):
        port = 443 if parsed.scheme == "https" else 80
    if not host or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise AffectError(
            f"RAY_ADDRESS={redact(address)}: no {what} answers there ({reason} within {timeout_s:g} s); start it, or "
            "set RAY_ADDRESS to its address (unset: Ray runs inside this process)"
        ) from None


def is_auth_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is Ray refusing this process's token, or Ray finding
    no token to send."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{type(current).__name__} {current}".lower()
        if any(mark in text for mark in _AUTH_MARKS):
            return True
        current = current.__cause__ or current.__context__
    return False


def connection_error(address: str, exc: BaseException) -> AffectError:
    """The one-line AffectError for a failure to reach the Ray cluster or job server at ``address``."""
    where = f"RAY_ADDRESS={redact(address)}"
    if is_auth_failure(exc):
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        return AffectError(f"{where}: the Ray cluster refused this process (token authentication; RAY_AUTH_MODE is "
                           f"{mode}): {AUTH_HINT}")  # fmt: skip
    first = " ".join(str(exc).split())[:300] or "no message"
    return AffectError(f"{where}: could not join the Ray cluster ({type(exc).__name__}: {redact(first)})")


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


def one_worker_trainer(train_loop: Any, *, watch_controller: bool = True, **kwargs: Any) -> Any:
    """A Ray Train run of one worker (one seed, one trial) with no torch process group: a ``TorchTrainer`` would
    start a process group of one whose TCP store listens on every interface of the node. ``kwargs`` are
    ``train_loop_config``, ``scaling_config`` and ``run_config`` as for any Ray Train V2 trainer.

    watch_controller: whether Ray Train's placement-group cleaner watches the run's controller (it removes the run's
    placement group should the controller die). It asks Ray's state API, which the dashboard serves: on the Ray this
    process starts (no dashboard) every query fails and prints a warning, and there a dead controller means a dead
    driver and Ray with it, so the drivers turn it off there (:func:`in_process_ray`)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    if watch_controller:
        return DataParallelTrainer(train_loop, **kwargs)
    return _unwatched_trainer(DataParallelTrainer)(train_loop, **kwargs)


def _unwatched_trainer(base: type) -> type:
    """``base`` without Ray Train's placement-group cleaner among its default callbacks (Ray pinned to 2.60.x)."""
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class UnwatchedTrainer(base):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    return UnwatchedTrainer


def autoscaler_gpus() -> float:
    """The most GPUs the autoscaler of the connected cluster can add (its node types, as the autoscaler publishes
    them to the GCS: KubeRay's worker groups, a cluster launcher's node types); 0 when it publishes none."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception as exc:  # noqa: BLE001 - no autoscaler, or an older GCS without the config: none to add
        logger.debug("autoscaler node types not readable: %s", type(exc).__name__)
        return 0.0
    return float(most.get("GPU", 0) or 0)


def in_process_ray() -> bool:
    """Whether the Ray this process drives is the one :func:`ensure_ray` started in it (no dashboard, no job
    server), rather than a cluster joined by address."""
    return _STARTED_IN_PROCESS


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
    global _STARTED_IN_PROCESS
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _STARTED_IN_PROCESS = False


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
