"""How a job runs: the one place that places a job of :mod:`flows.jobs` and asks Ray for its resources.

A job runs in one of three places (:class:`Placement`):

- ``LOCAL``: in this process, with the single-process library (``affect_core``);
- ``RAY``: as a Ray driver in this process (``tuning``), on an in-process Ray or the cluster ``RAY_ADDRESS`` joins;
- ``RAY_JOB``: submitted as a Ray job to the job server ``RAY_ADDRESS=http://head:8265`` names (a Prefect flow-run
  pod that is no Ray node reaches the cluster this way, :mod:`flows.ray_job`); on the cluster the job runs again, with
  its Ray switch on, as a Ray driver (:mod:`flows.ray_job_driver`).

:func:`placement` decides from the job's Ray switch (``--ray/--no-ray``, ``--parallel/--no-parallel``: the field
marked ``ray_switch``; a job without one, the search, always runs on Ray) and ``RAY_ADDRESS``. :func:`run_job` runs a
job where it is placed: before a Ray driver starts, it connects to Ray and waits for a node that can hold one unit of
the job's work (:class:`RayAsk`: one seed's worker, one trial, one scoring actor), which an autoscaler adds, with the
GPU ask resolved against the cluster (``auto:FRACTION``: that fraction where the cluster has or can add GPU nodes,
none where it cannot; :func:`gpus_to_ask`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from affect_core.errors import AffectError

logger = logging.getLogger(__name__)

T = TypeVar("T")
AUTO_GPUS = "auto"


class Placement(enum.Enum):
    """Where a job runs."""

    LOCAL = "this process"
    RAY = "a Ray driver in this process"
    RAY_JOB = "a Ray job at the job server"


@dataclass(frozen=True)
class RayAsk:
    """What one unit of a job's Ray work asks for (one seed's worker, one trial's worker, one scoring actor).

    gpus: a number (exactly that, whatever the cluster: the KubeRay entrypoints' asks), or ``auto[:FRACTION]``
    (:func:`gpus_to_ask`). what: names the unit and its options in the error a cluster too small for it gets."""

    cpus: float
    gpus: float | str
    what: str
    timeout_s: float


def ray_switch(job: Any) -> str | None:
    """The name of the job's field that turns Ray on (marked ``ray_switch`` in :mod:`flows.jobs`), if it has one."""
    for field in dataclasses.fields(job):
        if field.metadata.get("ray_switch"):
            return field.name
    return None


def use_ray(requested: bool | None) -> bool:
    """Whether a job that can run in one process or on Ray runs on Ray: as asked (its Ray switch), else when
    ``RAY_ADDRESS`` names a cluster or a job server."""
    if requested is not None:
        return bool(requested)
    return bool(os.environ.get("RAY_ADDRESS"))


def job_server() -> str | None:
    """``RAY_ADDRESS`` when it is a Ray job server address (``http://head:8265``): the Ray work of a job is then
    submitted to it as a Ray job instead of driven from this process."""
    from flows.ray_job import is_job_server

    address = os.environ.get("RAY_ADDRESS")
    return address if is_job_server(address) else None


def placement(job: Any) -> Placement:
    """Where ``job`` runs: in this process unless its Ray switch (or, unset, ``RAY_ADDRESS``) says Ray; on Ray, as
    a Ray job when ``RAY_ADDRESS`` is a job server address, else as a driver here."""
    switch = ray_switch(job)
    if switch is not None and not use_ray(getattr(job, switch)):
        return Placement.LOCAL
    return Placement.RAY_JOB if job_server() else Placement.RAY


def on_cluster(job: Any) -> Any:
    """``job`` as the driver of a Ray job runs it: with its Ray switch on."""
    switch = ray_switch(job)
    return dataclasses.replace(job, **{switch: True}) if switch else job


def run_job(
    job: Any,
    *,
    on_ray: Callable[[float], T],
    local: Callable[[], T] | None = None,
    ask: RayAsk | None = None,
    storage_options: dict[str, Any] | None = None,
) -> T:
    """Run ``job`` where :func:`placement` puts it.

    local: runs it in this process (None: the job always runs on Ray). on_ray: runs it as a Ray driver here, given
    the GPUs one unit of its work asks for (``ask.gpus`` resolved; 0 without an ask). ask: what one unit asks for;
    when given, Ray is joined (with ``storage_options``' S3 settings for the workers) and a node that can hold the
    unit is waited for before ``on_ray`` starts. Without one, ``on_ray`` connects when it needs Ray (a no-op ingest
    never starts it). As a Ray job the result comes back decoded (:func:`decode_result`)."""
    where = placement(job)
    if where is Placement.LOCAL:
        if local is None:
            raise AffectError(f"{type(job).__name__} runs on Ray only")
        return local()
    if where is Placement.RAY_JOB:
        return submitted(job)
    if ask is None:
        return on_ray(0.0)
    from tuning.cluster import ensure_ray, wait_for_capacity

    cluster = ensure_ray(storage_options=storage_options)
    gpus = gpus_to_ask(ask.gpus, cluster_gpus=cluster.gpus)
    wait_for_capacity({"CPU": ask.cpus, "GPU": gpus}, what=ask.what, timeout_s=ask.timeout_s)
    return on_ray(gpus)


def submitted(job: Any) -> Any:
    """The job's result, run as a Ray job at the job server in ``RAY_ADDRESS``."""
    from flows.ray_job import submit

    return decode_result(job, submit(job, job_server()))


def decode_result(job: Any, data: Any) -> Any:
    """A job's result from its JSON form (what a Ray job prints), as the job's ``run_<job>`` returns it."""
    kind = type(job).__name__
    if kind == "ScoreJob":
        from affect_core.scoring import ScoreResult as result
    elif kind == "TuneJob":
        from tuning.tune import TuneOutcome as result
    elif kind == "IngestJob":
        from affect_core.data.dataset import IngestResult as result
    else:
        return data
    given = {f.name for f in dataclasses.fields(result) if f.init}  # fields computed from others are left out
    return result(**{name: value for name, value in data.items() if name in given})


# -------------------------------------------------------------------------------------------------- GPU asks
def parse_gpus(value: Any) -> float | str:
    """A ``gpus_per_*`` value as given (a number, ``"0.5"``, ``"auto"`` or ``"auto:0.5"``), checked: a number >= 0,
    or ``auto`` with a fraction > 0 (1 when left out). Raises AffectError naming the value otherwise."""
    text = str(value).strip().lower()
    if text == AUTO_GPUS or text.startswith(AUTO_GPUS + ":"):
        fraction = text.partition(":")[2] or "1"
        if _number(fraction) is None or _number(fraction) <= 0:
            raise AffectError(f"GPU ask {value!r}: expected auto:FRACTION with a FRACTION > 0, e.g. auto:0.5")
        return f"{AUTO_GPUS}:{_number(fraction):g}"
    amount = _number(text)
    if amount is None or amount < 0:
        raise AffectError(f"GPU ask {value!r}: expected a number >= 0 (a fraction shares a GPU) or auto:FRACTION")
    return amount


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def gpus_to_ask(value: float | str, *, cluster_gpus: float) -> float:
    """The GPUs one unit of work asks for on the connected cluster. A number is asked for as it is (a cluster without
    GPUs then refuses it in one line); ``auto:FRACTION`` is FRACTION where the cluster has GPUs now
    (``cluster_gpus``) or its autoscaler can add nodes with GPUs, else 0 (the work runs on CPUs)."""
    wanted = parse_gpus(value)
    if isinstance(wanted, float):
        return wanted
    from tuning.cluster import autoscaler_gpus

    fraction = float(wanted.partition(":")[2])
    if cluster_gpus > 0 or autoscaler_gpus() > 0:
        return fraction
    logger.info("no GPU node here and none the autoscaler can add: %s asks for no GPU", value)
    return 0.0
