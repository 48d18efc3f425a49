"""Process management shared by every service: launching a command in its own process group, finding the
processes of a launch again (by pid, checked by creation time, never by name), stopping them, free ports on
127.0.0.1, loopback checks and owner-only files.

:class:`Service` is the lifecycle every service module builds on: ``start()`` waits until the service answers
(or fails with the tail of its log and stops what it started), ``stop()`` ends exactly the processes it
started and checks that none is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import psutil

from affect_core.errors import AffectError

LOOPBACK = "127.0.0.1"

logger = logging.getLogger(__name__)

_handed_out_ports: set[int] = set()


class ServiceError(AffectError):
    """A local service could not be started, did not answer, or left processes behind."""


# ---------------------------------------------------------------------------------------------- network


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


# ---------------------------------------------------------------------------------- files and environment


def private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by the owner only (created that way, never
    world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def export_lines(env: Mapping[str, str]) -> str:
    """``export NAME=value`` lines (values shell-quoted), one per variable."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def venv_script(name: str) -> str:
    """The console script ``name`` installed next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name}: command not found next to {sys.executable} or on PATH")
    return found


def service_env(drop: Iterable[str] = ()) -> dict[str, str]:
    """The current environment minus variables that would point a service at something else."""
    env = dict(os.environ)
    for name in drop:
        env.pop(name, None)
    return env


# ---------------------------------------------------------------------------------------- process trees


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an exited child not yet reaped by its parent is gone for our purposes)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_name(process: psutil.Process) -> str:
    """The process's name, or "" once it is gone."""
    try:
        return process.name()
    except psutil.Error:
        return ""


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process ``pid`` if it is the one created at ``create_time`` (guards against reused pids)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > 1.0:
            return None
    except psutil.Error:
        return None
    return process if running(process) else None


def process_tree(leader_pid: int, create_time: float) -> list[psutil.Process]:
    """The live processes of a launch: the leader, its descendants and the members of its process group."""
    found: dict[int, psutil.Process] = {}
    leader = same_process(leader_pid, create_time)
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
    return [process for process in found.values() if running(process)]


def tree_pids(leader_pid: int, create_time: float) -> list[int]:
    """Pids of :func:`process_tree`, sorted."""
    return sorted(process.pid for process in process_tree(leader_pid, create_time))


def terminate_tree(
    leader_pid: int,
    create_time: float,
    *,
    grace: float,
    popen: subprocess.Popen[bytes] | None = None,
    extra: Iterable[psutil.Process] = (),
) -> None:
    """Stop one launch: SIGTERM to its leader (which shuts its own children down), then SIGKILL to whatever of
    the tree (and of ``extra``) is left after ``grace`` seconds; raise :class:`ServiceError` if a process
    survives."""
    members = {process.pid: process for process in [*process_tree(leader_pid, create_time), *extra]}
    leader = same_process(leader_pid, create_time)
    if leader is not None:
        with contextlib.suppress(psutil.Error):
            leader.send_signal(signal.SIGTERM)
        with contextlib.suppress(psutil.Error, subprocess.TimeoutExpired):
            if popen is not None:
                popen.wait(timeout=grace)
            else:
                leader.wait(timeout=grace)
    for process in process_tree(leader_pid, create_time):
        members.setdefault(process.pid, process)
    left = [process for process in members.values() if running(process)]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=10)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
    survivors = sorted({p.pid for p in members.values() if running(p)} | set(tree_pids(leader_pid, create_time)))
    if survivors:
        raise ServiceError(f"process group {leader_pid}: processes {survivors} still alive after SIGKILL")


def process_record(process: psutil.Process) -> dict[str, Any]:
    """``{"pid", "create_time"}`` of a process, for a state file."""
    return {"pid": process.pid, "create_time": process.create_time()}


class Launch:
    """One command started in its own process group (``start_new_session=True``), its output appended to a
    log file."""

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
        return [] if self.popen is None else process_tree(self.pid, self.create_time)

    def terminate(self, grace: float, extra: Iterable[psutil.Process] = ()) -> None:
        if self.popen is not None:
            terminate_tree(self.pid, self.create_time, grace=grace, popen=self.popen, extra=extra)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def leader_record(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "leader": True, "name": self.name}


_ServiceT = TypeVar("_ServiceT", bound="Service")


class Service:
    """The lifecycle of a local service: ``start()``, ``stop()``, ``with``, and the pids it started.

    A subclass overrides ``_launch()`` (start its processes as :class:`Launch` objects in ``self._launches``)
    and ``_wait_ready(deadline)`` (return once the service answers, a ``time.monotonic()`` deadline; raise
    :class:`ServiceError` otherwise)."""

    name = "service"
    stop_grace = 10.0

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._launches: list[Launch] = []
        self._began = 0.0

    def __enter__(self: _ServiceT) -> _ServiceT:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the service and wait until it answers; raise :class:`ServiceError` (with its log's tail) if
        not."""
        self.begin()
        self.wait_until_ready()

    def begin(self) -> None:
        """Launch the service's processes without waiting for them (so that several services boot at once);
        :meth:`wait_until_ready` then waits."""
        if self.running:
            raise ServiceError(f"{self.name}: already running (pids {self.pids()}); stop it first")
        self._began = time.monotonic()
        self._launch()

    def wait_until_ready(self) -> None:
        """Wait until the service begun by :meth:`begin` answers (at most ``startup_timeout`` seconds from
        now); on failure stop what was started and raise :class:`ServiceError`."""
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop_quietly()
            raise
        self.startup_seconds = time.monotonic() - self._began
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

    def stop_quietly(self) -> None:
        """:meth:`stop`, ignoring survivors (used while a failed start is being reported)."""
        with contextlib.suppress(ServiceError):
            self.stop()

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
                    records.setdefault(process.pid, process_record(process))
        return list(records.values())

    def _launch(self) -> None:
        raise NotImplementedError

    def _wait_ready(self, deadline: float) -> None:
        raise NotImplementedError

    def _check_alive(self, launch: Launch) -> None:
        code = launch.exit_code()
        if code is not None:
            raise ServiceError(
                f"{self.name}: {launch.name} exited with code {code} during startup; log {launch.log_path}:\n"
                f"{launch.log_tail()}"
            )

    def _timeout(self, launch: Launch, waiting_for: str) -> ServiceError:
        return ServiceError(
            f"{self.name}: {waiting_for} not ready within {self.startup_timeout:.0f} s; "
            f"log {launch.log_path}:\n{launch.log_tail()}"
        )
