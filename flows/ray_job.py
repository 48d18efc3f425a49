"""Ray work from outside the cluster: a job of :mod:`flows.jobs` submitted as a Ray job to a job server.

When ``RAY_ADDRESS`` is a Ray job server address (``http://head:8265``; a Prefect flow-run pod that is no Ray node
reaches the cluster this way), :func:`submit` hands the job to the server with the job submission client
(``ray.job_submission.JobSubmissionClient``), streams the job's logs to this process's stderr, waits for it, and
returns its result or raises an AffectError carrying the job's own error. On the cluster the job's driver is
:mod:`flows.ray_job_driver` run as ``python -m flows.ray_job_driver '<job as JSON>'``: it runs the same job (with Ray,
at the ``RAY_ADDRESS`` the job server gives its drivers) and prints its result as the last line of its logs.

The job's JSON holds URLs and options only: storage keys never travel with it (the cluster's nodes have their own,
from their environment).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from typing import Any

from affect_core.errors import AffectError
from affect_core.storage import redact

RESULT_MARK = "affect-ray-job-result: "
POLL_S = 1.0


def is_job_server(address: str | None) -> bool:
    """Whether ``address`` (a ``RAY_ADDRESS`` value) names a Ray job server rather than a cluster to join."""
    return bool(address) and str(address).startswith(("http://", "https://"))


def entrypoint(job: Any) -> str:
    """The shell command that runs ``job`` as the driver of a Ray job."""
    payload = json.dumps({"kind": type(job).__name__, "job": dataclasses.asdict(job)})
    return f"python -m flows.ray_job_driver {shlex.quote(payload)}"


def submit(job: Any, address: str, *, poll_s: float = POLL_S) -> Any:
    """Run ``job`` as a Ray job at the job server ``address``; stream its logs to stderr; return its result in its
    JSON form (:func:`flows.runner.decode_result` decodes it)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tuning.cluster import AUTH_HINT, check_reachable, is_auth_failure

    where = redact(address)
    # The client's requests have no timeout: an address that drops packets would hang it for minutes.
    check_reachable(address, what="Ray job server")
    try:
        client = JobSubmissionClient(address)
        job_id = _submit_when_ready(client, entrypoint(job), {"affect_job": type(job).__name__})
    except Exception as exc:  # noqa: BLE001 - the client's HTTP, version and authentication errors
        if is_auth_failure(exc):
            raise AffectError(
                f"RAY_ADDRESS={where}: the Ray job server refused this process (token authentication): {AUTH_HINT}"
            ) from exc
        if isinstance(exc, (ConnectionError, OSError)):
            raise AffectError(f"RAY_ADDRESS={where}: no Ray job server answers ({type(exc).__name__})") from exc
        raise AffectError(f"RAY_ADDRESS={where}: the Ray job server refused the job: {_first_line(exc)}") from exc
    print(f"submitted Ray job {job_id} to {where}", file=sys.stderr, flush=True)
    shown = 0
    try:
        while True:
            status = client.get_job_status(job_id)
            logs = client.get_job_logs(job_id)
            shown = _echo(logs, shown)
            if status.is_terminal():
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        raise
    if status != JobStatus.SUCCEEDED:
        lines = [line for line in logs.splitlines() if line.strip()]
        errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
        detail = errors[-1] if errors else _first_line(lines[-1] if lines else client.get_job_info(job_id).message)
        raise AffectError(f"Ray job {job_id} at {where} {status.value.lower()}: {detail}")
    results = [line for line in logs.splitlines() if line.startswith(RESULT_MARK)]
    if not results:
        raise AffectError(f"Ray job {job_id} at {where} succeeded but printed no result")
    return json.loads(results[-1][len(RESULT_MARK) :])


def _submit_when_ready(client: Any, command: str, metadata: dict[str, str], *, wait_s: float = 300.0) -> str:
    """Submit, retrying while a head that has just started says it has no job agent yet ("try again later")."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=command, metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - the client raises its HTTP errors as plain exceptions
            if "try again later" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _echo(logs: str, shown: int) -> int:
    """Write the part of ``logs`` not written yet to stderr, except the result line and the job's error line (the
    error ends the command as its one error line); return the new length."""
    for line in logs[shown:].splitlines(keepends=True):
        if not line.startswith((RESULT_MARK, "error: ")):
            sys.stderr.write(line)
    sys.stderr.flush()
    return len(logs)


def _first_line(message: Any) -> str:
    return redact(str(message).strip().splitlines()[0] if str(message).strip() else "no message")[:500]
