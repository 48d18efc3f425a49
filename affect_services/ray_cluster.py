"""A Ray cluster of one head and N worker nodes on 127.0.0.1 with token authentication, optionally with the
head's job server (Ray's dashboard), for the tests and the local stack.

Why worker nodes need a patch of a private Ray module (checked against the installed Ray, 2.60):
Ray's gRPC servers (GCS, raylet, object manager) bind to 127.0.0.1 only when the node's address is exactly
``127.0.0.1``, otherwise to every interface (``GrpcServer::Run`` in Ray's src/ray/rpc/grpc_server.cc).
``ray start --node-ip-address=127.0.0.1`` does not keep that address: ray/scripts/scripts.py (``start``) passes
it and the ``--address`` of a worker node through ``resolve_ip_for_localhost`` (ray/_private/services.py), which
replaces a loopback address with the machine's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``.
That switch is enough for the head (it is started with Ray's own CLI, unchanged), but with it set ``ray start``
refuses to start a worker node at all ("Multi-node Ray clusters are not supported on Windows and OSX",
scripts.py). No public option or environment variable does both (the same limitation is Ray's open issue
ray-project/ray#59110), so a worker node is started through Ray's CLI with ``get_node_ip_address`` pinned to
loopback and the multi-node refusal lifted: :data:`_WORKER_START` below, the only place that touches Ray's
private modules to start a node. tests/test_services.py lists the listening sockets of every process of the
cluster to check the result; docs/architecture.md ("Services") describes the package.

Every process of the cluster, drivers included, runs with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so that a
driver's ``RAY_ADDRESS=127.0.0.1:<port>`` is used as it is. A driver must see :meth:`RayCluster.env` before it
imports ray; a process that has already imported ray calls :func:`prepare_ray_driver` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil

from affect_services.process import (
    LOOPBACK,
    Launch,
    Service,
    ServiceError,
    free_port,
    port_open,
    private_file,
    process_name,
    service_env,
    venv_script,
)

logger = logging.getLogger(__name__)

SCRATCH_PREFIX = "affect-ray-"
# The name under which the local stack exports the GCS address when RAY_ADDRESS is the job server's.
GCS_ADDRESS_ENV = "AFFECT_RAY_GCS_ADDRESS"
# Ray's switch that keeps loopback addresses as they are (read by ray/_private/ray_constants.py).
_KEEP_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# `ray start` for a worker node, with address resolution pinned to loopback; see the module docstring.
_WORKER_START = """\
import sys
import ray._private.ray_constants as ray_constants
import ray._private.services as ray_services
from ray.scripts.scripts import main
ray_constants.ENABLE_RAY_CLUSTER = True  # allow a worker node while the environment keeps loopback addresses
ray_services.get_node_ip_address = lambda address=None: "127.0.0.1"
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(main())
"""

# Connects a driver, waits until the expected number of nodes is alive and, if given, the job server answers.
_RAY_READY_PROBE = """\
import sys, time
import ray
expected, timeout, job_server = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + timeout
ray.init(logging_level="ERROR", log_to_driver=False)
try:
    while True:
        alive = [node for node in ray.nodes() if node["Alive"]]
        if len(alive) >= expected:
            break
        if time.monotonic() > deadline:
            sys.exit(f"only {len(alive)} of {expected} Ray nodes alive")
        time.sleep(0.2)
finally:
    ray.shutdown()
if job_server:
    from ray.job_submission import JobSubmissionClient
    while True:
        try:
            JobSubmissionClient(job_server).list_jobs()
            break
        except Exception as error:
            if time.monotonic() > deadline:
                sys.exit(f"job server {job_server} does not answer: {error}")
            time.sleep(0.5)
print(len(alive))
"""


class _RayNode:
    """One ``ray start --block`` process (a head or a worker node) and its ports."""

    def __init__(self, label: str, launch: Launch, node_manager_port: int) -> None:
        self.label = label
        self.launch = launch
        self.node_manager_port = node_manager_port


class RayCluster(Service):
    """A Ray cluster of one head and ``worker_nodes`` worker nodes on 127.0.0.1, token authentication on.

    Each node is a ``ray start --block`` process in its own process group (stopping it stops its raylet,
    workers and agents). With ``job_server=True`` the head also runs Ray's dashboard, whose job server
    (:attr:`job_server_url`) accepts Ray jobs (``ray.job_submission.JobSubmissionClient``); it needs
    ``ray[default]``. Logs go to ``base_dir/<node>.log`` and the Ray session directories to
    ``base_dir/tmp/<node>`` (or, when that path is too long for Ray's unix sockets, a short directory under
    the system temp dir, linked from ``base_dir/tmp`` and removed on stop). The token is in
    ``base_dir/auth_token`` (owner-only).

    ``node_env`` (also settable before :meth:`start`) is added to every node's environment: the S3 endpoint and
    keys that the workers, and the drivers the job server starts, read from their environment, as a cluster's
    pods get them from a Secret. Work never carries keys itself (see tuning/cluster.py); nodes started without
    them cannot reach a store that needs them."""

    name = "Ray cluster"
    stop_grace = 35.0  # a node told to drain (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S) waits up to 30 s after SIGTERM

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        head_cpus: int = 1,
        worker_nodes: int = 1,
        worker_cpus: int = 1,
        object_store_mb: int = 256,
        job_server: bool = False,
        node_env: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.node_env = dict(node_env or {})
        self.base_dir = Path(base_dir).absolute()
        self.head_cpus = head_cpus
        self.worker_nodes = worker_nodes
        self.worker_cpus = worker_cpus
        self.object_store_mb = object_store_mb
        self.job_server = job_server
        self.token_path = self.base_dir / "auth_token"
        self._gcs_port = 0
        self._dashboard_port = 0
        self._head: _RayNode | None = None
        self._workers: list[_RayNode | None] = []
        self._tmp_root: Path | None = None
        self._short_tmp: Path | None = None

    def __repr__(self) -> str:
        return f"RayCluster(base_dir={str(self.base_dir)!r}, address={self.address!r})"

    @property
    def address(self) -> str:
        """``127.0.0.1:<gcs port>``, the value for ``RAY_ADDRESS`` / ``ray.init(address=...)`` on this
        machine."""
        return f"{LOOPBACK}:{self._gcs_port}" if self._gcs_port else ""

    @property
    def job_server_url(self) -> str:
        """``http://127.0.0.1:<port>``, the head's job server (empty without ``job_server=True``)."""
        return f"http://{LOOPBACK}:{self._dashboard_port}" if self._dashboard_port else ""

    def env(self) -> dict[str, str]:
        """Environment for a driver: the GCS address, token authentication, and loopback addresses kept as
        they are."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            **_KEEP_LOOPBACK,
        }

    def job_env(self) -> dict[str, str]:
        """Environment for work submitted from outside the cluster: ``RAY_ADDRESS`` is the job server's
        http:// address, the GCS address stays available as ``AFFECT_RAY_GCS_ADDRESS``."""
        if not self.job_server_url:
            raise ServiceError(f"{self.name}: started without a job server (job_server=True)")
        return {**self.env(), "RAY_ADDRESS": self.job_server_url, GCS_ADDRESS_ENV: self.address}

    @property
    def scratch_dir(self) -> Path | None:
        """The short temp dir holding the Ray session directories, if ``base_dir`` was too long for them."""
        return self._short_tmp

    def node_pids(self) -> list[list[int]]:
        """Live pids per node: the head first, then each worker node (empty once that node is killed)."""
        nodes = [self._head, *self._workers]
        return [sorted(p.pid for p in node.launch.processes()) if node else [] for node in nodes]

    def kill_worker(self, index: int, timeout: float = 30.0) -> None:
        """Simulate the failure of worker node ``index`` (0-based): SIGKILL its raylet; its ``ray start``
        process then takes the rest of the node down (anything left after ``timeout`` s is killed). Checks
        nothing of it is left."""
        node = self._worker(index)
        # Ray's worker processes start their own sessions: once the raylet is gone they are nobody's descendants.
        before = node.launch.processes()
        raylets = [p for p in before if process_name(p) == "raylet"]
        if not raylets:
            raise ServiceError(f"{self.name}: worker node {index} has no raylet to kill")
        for raylet in raylets:
            with contextlib.suppress(psutil.Error):
                raylet.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            if node.launch.popen is not None:
                node.launch.popen.wait(timeout=timeout)
        node.launch.terminate(grace=0.0, extra=before)
        self._workers[index] = None
        logger.info("%s: worker node %d killed", self.name, index)

    def restart_worker(self, index: int) -> None:
        """Start worker node ``index`` again (after :meth:`kill_worker`) and wait until it has joined."""
        if self._workers[index] is not None:
            raise ServiceError(f"{self.name}: worker node {index} is still running")
        node = self._launch_worker(index)
        self._workers[index] = node
        deadline = time.monotonic() + self.startup_timeout
        self._wait_node(node, deadline)
        self._wait_nodes(deadline)

    def stop(self) -> None:
        """Stop the worker nodes, then the head; check nothing is left; remove the short temp dir if one was
        made."""
        try:
            super().stop()
        finally:
            self._head = None
            self._workers = []
            if self._short_tmp is not None:
                shutil.rmtree(self._short_tmp, ignore_errors=True)
                with contextlib.suppress(OSError):
                    (self.base_dir / "tmp").unlink()
                self._short_tmp = None

    def _worker(self, index: int) -> _RayNode:
        if not 0 <= index < len(self._workers) or self._workers[index] is None:
            raise ServiceError(f"{self.name}: no running worker node {index}")
        node = self._workers[index]
        assert node is not None
        return node

    def _node_env(self, extra: Mapping[str, str] = ()) -> dict[str, str]:
        env = service_env(drop=("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", GCS_ADDRESS_ENV))
        env.update(self.env())
        env.pop("RAY_ADDRESS")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # A node stopped with SIGTERM first drains for up to 30 s while any actor is alive (such as the autoscaling
        # coordinator Ray Train leaves behind): time for a Serve proxy to quiesce, which this cluster never runs.
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        # A job's entrypoint (`python ...`, `affect ...`) runs the environment the cluster runs with, as in the
        # image, where that environment is first on PATH (infra/docker/Dockerfile).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
        env.update(self.node_env)
        env.update(extra)
        return env

    def _node_tmp(self, label: str) -> Path:
        assert self._tmp_root is not None
        path = self._tmp_root / ("h" if label == "head" else label.replace("worker", "w"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            private_file(self.token_path, secrets.token_hex(32))
        # Ray's unix sockets live in <tmp>/<node>/session_<date>_<pid>/sockets/plasma_store and the like, and
        # a unix socket path holds at most 107 bytes: the session part takes up to 64, the node part 4.
        tmp_root = self.base_dir / "tmp"
        if len(str(tmp_root)) <= 107 - 64 - 4:
            tmp_root.mkdir(exist_ok=True)
            self._tmp_root = tmp_root
        else:
            self._short_tmp = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            self._tmp_root = self._short_tmp
            with contextlib.suppress(OSError):
                if tmp_root.is_symlink():
                    tmp_root.unlink()
                tmp_root.symlink_to(self._short_tmp)

    def _start_options(self, label: str, node_manager_port: int, cpus: int) -> list[str]:
        """``ray start`` options every node gets: loopback, its CPUs, and every port chosen free on
        127.0.0.1 (Ray's fixed defaults would collide between clusters on one machine)."""
        return [
            "start",
            "--block",
            f"--node-ip-address={LOOPBACK}",
            f"--num-cpus={cpus}",
            f"--node-manager-port={node_manager_port}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={self._node_tmp(label)}",
            "--disable-usage-stats",
            "--log-color=false",
        ]

    def _launch(self) -> None:
        self._prepare_dirs()
        self._gcs_port = free_port()
        self._dashboard_port = free_port() if self.job_server else 0
        node_manager_port = free_port()
        # The head keeps 127.0.0.1 through Ray's public switch alone (see the module docstring).
        argv = [venv_script("ray"), *self._start_options("head", node_manager_port, self.head_cpus)]
        argv += ["--head", f"--port={self._gcs_port}", f"--ray-client-server-port={free_port()}"]
        if self.job_server:
            argv += [
                "--include-dashboard=true",
                f"--dashboard-host={LOOPBACK}",
                f"--dashboard-port={self._dashboard_port}",
            ]
        else:
            argv += ["--include-dashboard=false", f"--dashboard-port={free_port()}"]
        # The autoscaler monitor of a head listens on a fixed port unless told otherwise.
        env = self._node_env({"AUTOSCALER_METRIC_PORT": str(free_port())})
        launch = Launch("ray head", argv, env, self.base_dir / "head.log")
        self._head = _RayNode("head", launch, node_manager_port)
        self._workers = []
        self._launches = [launch]
        launch.launch()

    def _launch_worker(self, index: int) -> _RayNode:
        node_manager_port = free_port()
        label = f"worker{index}"
        argv = [sys.executable, "-c", _WORKER_START, *self._start_options(label, node_manager_port, self.worker_cpus)]
        argv += [f"--address={self.address}", "--num-gpus=0"]
        launch = Launch(f"ray {label}", argv, self._node_env(), self.base_dir / f"{label}.log")
        self._launches.append(launch)
        launch.launch()
        return _RayNode(label, launch, node_manager_port)

    def _wait_node(self, node: _RayNode, deadline: float) -> None:
        ports = [node.node_manager_port] + ([self._gcs_port] if node is self._head else [])
        while not all(port_open(port) for port in ports):
            self._check_alive(node.launch)
            if time.monotonic() > deadline:
                raise self._timeout(node.launch, f"{node.label} node")
            time.sleep(0.2)

    def _wait_nodes(self, deadline: float) -> None:
        expected = 1 + sum(node is not None for node in self._workers)
        env = {**service_env(drop=("RAY_AUTH_TOKEN",)), **self.env(), "RAY_USAGE_STATS_ENABLED": "0"}
        timeout = max(5.0, deadline - time.monotonic())
        probe = [sys.executable, "-c", _RAY_READY_PROBE, str(expected), str(timeout), self.job_server_url]
        try:
            result = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=timeout + 30)
        except subprocess.TimeoutExpired as error:
            assert self._head is not None
            raise self._timeout(self._head.launch, f"{expected} nodes") from error
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).splitlines()[-15:])
            raise ServiceError(f"{self.name}: a driver could not see {expected} nodes at {self.address}:\n{tail}")

    def _wait_ready(self, deadline: float) -> None:
        assert self._head is not None
        self._wait_node(self._head, deadline)
        for index in range(self.worker_nodes):
            self._workers.append(self._launch_worker(index))
        for node in self._workers:
            assert node is not None
            self._wait_node(node, deadline)
        self._wait_nodes(deadline)


def prepare_ray_driver(env: Mapping[str, str]) -> None:
    """Make this process a driver for a :class:`RayCluster`: export ``env`` (from :meth:`RayCluster.env`) and,
    if ray was imported before, re-read the settings ray caches when it loads (loopback, auth mode, token)."""
    os.environ.update(env)
    _refresh_ray_settings()


@contextlib.contextmanager
def ray_driver_environment(env: Mapping[str, str]) -> Iterator[None]:
    """:func:`prepare_ray_driver` for the duration of a ``with`` block; the previous environment and ray's
    settings come back afterwards (call ``ray.shutdown()`` inside the block)."""
    saved = {name: os.environ.get(name) for name in env}
    prepare_ray_driver(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _refresh_ray_settings()


def _refresh_ray_settings() -> None:
    """Ray reads the loopback switch (ray/_private/ray_constants.py) and the auth settings (ray._raylet's
    ``Config`` and token loader) once, when it is imported, and has no public way to read them again; a
    driver in a process that imported ray earlier re-reads them here, as Ray's own setup does."""
    if "ray._private.ray_constants" in sys.modules:
        constants = sys.modules["ray._private.ray_constants"]
        constants.ENABLE_RAY_CLUSTER = constants.env_bool(
            constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not constants.IS_WINDOWS_OR_OSX
        )
    if "ray._raylet" in sys.modules:
        raylet = sys.modules["ray._raylet"]
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()
