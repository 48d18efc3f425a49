"""Which failures a task retries: storage and cluster faults (transient), never bad input or bugs.

Prefect calls :func:`retry_on_transient` (a ``retry_condition_fn``) when a task run fails; the task's own
``retries`` and exponential backoff then apply. A failure counts as transient when any exception in its chain
(``__cause__``, ``__context__`` -- kept even under ``raise ... from None`` -- and a Ray task error's ``cause``)
is a connection, timeout or I/O error of the storage client, or a Ray system error (a dead worker, node or
actor, a lost object). Classes are recognised by name along their MRO, so neither botocore nor ray is imported
here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect.tasks import exponential_backoff

TRANSIENT_CLASS_NAMES = frozenset(
    {
        # builtins (also caught through OSError below) and storage clients: botocore, aiohttp, urllib3, requests
        "ConnectionError",
        "TimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "HTTPClientError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ProtocolError",
        "NewConnectionError",
        "MaxRetryError",
        # Ray: the cluster lost something, the work itself did not fail
        "RaySystemError",
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "ObjectFetchTimedOutError",
        "GetTimeoutError",
        "OutOfMemoryError",
    }
)
# OSErrors that say the request itself is wrong: retrying cannot help.
PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)

# Task retry policy for storage and cluster work: 3 retries after 5, 10 and 20 s (+-50 % jitter).
RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=5)
RETRY_JITTER = 0.5


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or during, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [current.__cause__, current.__context__]  # type: ignore[list-item]
        cause = getattr(current, "cause", None)  # ray.exceptions.RayTaskError wraps the worker's exception
        if isinstance(cause, BaseException):
            stack.append(cause)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its chain) is a storage or cluster fault worth retrying."""
    for current in exception_chain(exc):
        if {kind.__name__ for kind in type(current).__mro__} & TRANSIENT_CLASS_NAMES:
            return True
        if isinstance(current, OSError) and not isinstance(current, PERMANENT_OS_ERRORS):
            return True
    return False


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only when its exception is transient."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable result is not evidence of a transient fault
            return False
    return isinstance(exc, BaseException) and is_transient(exc)
