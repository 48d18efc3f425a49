"""Scheduled deployments: read ``schedules.yaml``, build the deployments, serve them against a Prefect server.

File format (the repository's ``schedules.yaml`` is the example; ``prefect.yaml`` declares the same deployments
for ``prefect deploy`` to a work pool)::

    deployments:
      - name: nightly-ingest          # deployment name (unique in the file)
        flow: ingest                  # ingest | tune | train | score | pipeline
        cron: "0 2 * * *"             # or  interval: 3600  (seconds); one of the two
        timezone: UTC                 # optional, IANA name (cron only)
        description: ...              # optional
        tags: [nightly]               # optional
        paused: false                 # optional
        concurrency_limit: 1          # optional: at most this many runs of the deployment at once (others wait)
        parameters:                   # the flow's parameters: its job (flows/jobs.py), field by field
          job: {source: ..., dataset_url: ...}

Schedules need a real server: the ephemeral API that one-off runs start lives only as long as its process and
runs no scheduler. :func:`require_server` says so as an AffectError.
"""

from __future__ import annotations

import inspect
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affect_core.errors import AffectError
from affect_core.storage import redact

SPEC_KEYS = {
    "name",
    "flow",
    "cron",
    "interval",
    "timezone",
    "description",
    "tags",
    "paused",
    "concurrency_limit",
    "parameters",
}


@dataclass
class DeploymentSpec:
    """One deployment of ``schedules.yaml``."""

    name: str
    flow: str
    cron: str | None = None
    interval: float | None = None
    timezone: str | None = None
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    paused: bool = False
    concurrency_limit: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def flow_objects() -> dict[str, Any]:
    """The flows by their short name (the ``flow`` field of a spec)."""
    from flows import workflows

    return {
        "ingest": workflows.ingest_flow,
        "tune": workflows.tune_flow,
        "train": workflows.train_flow,
        "score": workflows.score_flow,
        "pipeline": workflows.pipeline_flow,
    }


def load_schedules(path: str | Path) -> list[DeploymentSpec]:
    """Parse and check a schedules file; every problem is an AffectError naming the file and the deployment."""
    import yaml

    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AffectError(f"{where}: schedules file not found") from None
    except UnicodeDecodeError:
        raise AffectError(f"{where}: not UTF-8 text; expected YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AffectError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list) or not data["deployments"]:
        raise AffectError(f"{where}: expected a mapping with a non-empty list 'deployments'")
    flows = flow_objects()
    specs: list[DeploymentSpec] = []
    for index, entry in enumerate(data["deployments"]):
        label = f"{where}: deployments[{index}]"
        if not isinstance(entry, dict):
            raise AffectError(f"{label}: expected a mapping with name, flow, cron or interval, parameters")
        unknown = set(entry) - SPEC_KEYS
        if unknown:
            raise AffectError(f"{label}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise AffectError(f"{label}: 'name' must be a non-empty string")
        label = f"{where}: deployment {name!r}"
        if name in {s.name for s in specs}:
            raise AffectError(f"{label}: the name is used twice")
        if entry.get("flow") not in flows:
            raise AffectError(f"{label}: flow {entry.get('flow')!r} unknown; expected one of {', '.join(flows)}")
        if ("cron" in entry) == ("interval" in entry):
            raise AffectError(f"{label}: give exactly one of 'cron' or 'interval' (seconds)")
        if "interval" in entry and (not isinstance(entry["interval"], (int, float)) or entry["interval"] <= 0):
            raise AffectError(f"{label}: interval must be a positive number of seconds")
        if "cron" in entry:
            _check_cron(entry["cron"], label)
        limit = entry.get("concurrency_limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise AffectError(f"{label}: concurrency_limit must be a whole number >= 1")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise AffectError(f"{label}: 'parameters' must be a mapping")
        _check_parameters(flows[entry["flow"]], parameters, label)
        specs.append(
            DeploymentSpec(
                name=name,
                flow=entry["flow"],
                cron=entry.get("cron"),
                interval=float(entry["interval"]) if "interval" in entry else None,
                timezone=entry.get("timezone"),
                description=entry.get("description"),
                tags=[str(t) for t in entry.get("tags") or []],
                paused=bool(entry.get("paused", False)),
                concurrency_limit=limit,
                parameters=parameters,
            )
        )
    return specs


def _check_cron(cron: Any, label: str) -> None:
    from prefect.schedules import Cron

    if not isinstance(cron, str):
        raise AffectError(f"{label}: cron must be a string such as '0 2 * * *'")
    try:
        Cron(cron)
    except ValueError as exc:
        raise AffectError(f"{label}: invalid cron {cron!r} ({str(exc).splitlines()[0]})") from None


def _check_parameters(flow: Any, parameters: dict[str, Any], label: str) -> None:
    """The parameters name the flow's parameters; a job parameter (a dataclass of :mod:`flows.jobs`) is checked
    field by field, sub-jobs included."""
    import typing

    from flows.jobs import check_parameters, is_job

    signature = inspect.signature(flow.fn)
    hints = typing.get_type_hints(flow.fn)
    unknown = set(parameters) - set(signature.parameters)
    if unknown:
        raise AffectError(
            f"{label}: unknown parameter(s) {sorted(unknown)} for flow {flow.name}; "
            f"known: {', '.join(signature.parameters)}"
        )
    missing = [
        n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty and n not in parameters
    ]
    if missing:
        raise AffectError(f"{label}: missing required parameter(s) {missing} of flow {flow.name}")
    for name, value in parameters.items():
        if is_job(hints.get(name)):
            check_parameters(hints[name], value, f"{label}: {name}")


def build_deployments(specs: list[DeploymentSpec]) -> list[Any]:
    """Runner deployments (``flow.to_deployment``) with their schedules and parameters."""
    from prefect.schedules import Cron, Interval
    from prefect.types.entrypoint import EntrypointType

    flows = flow_objects()
    deployments = []
    for spec in specs:
        schedule = (
            Cron(spec.cron, timezone=spec.timezone) if spec.cron else Interval(spec.interval, timezone=spec.timezone)
        )
        deployments.append(
            flows[spec.flow].to_deployment(
                name=spec.name,
                schedules=[schedule],
                parameters=spec.parameters,
                description=spec.description,
                tags=spec.tags,
                paused=spec.paused,
                concurrency_limit=spec.concurrency_limit,
                # "flows.workflows.<name>": found wherever the package is installed, whatever the cwd
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def require_server() -> str:
    """The configured PREFECT_API_URL, checked to answer; an AffectError explaining what to do otherwise."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise AffectError(
            "schedules need a Prefect server, and PREFECT_API_URL is not set: the ephemeral API of one-off runs "
            "runs no scheduler. Start one with `prefect server start --host 127.0.0.1` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or use `make stack-up`)"
        )
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=5) as response:
            healthy = response.status == 200 and json.loads(response.read()) is True
    except (OSError, urllib.error.URLError, ValueError):
        healthy = False
    if not healthy:
        raise AffectError(
            f"PREFECT_API_URL={redact(api_url)}: no Prefect server answers there; start it with "
            "`prefect server start --host 127.0.0.1` or fix the URL"
        )
    return api_url


def serve_schedules(path: str | Path, *, limit: int | None = None) -> None:
    """Serve the deployments of ``path`` against the configured server until interrupted (Ctrl-C, SIGTERM)."""
    from prefect import serve

    specs = load_schedules(path)
    require_server()
    serve(*build_deployments(specs), limit=limit, print_starting_message=True)
