"""Prefect tasks: each is ``task(fn)`` of a job's run function in :mod:`flows.jobs` (the one that also serves the
CLI), plus the pipeline's run record.

Retries: tasks retry up to :data:`flows.retry.RETRIES` times with exponential backoff, but only for transient faults
(:func:`flows.retry.retry_on_transient`); bad input fails at once. Retrying is safe because every step is idempotent
on its outputs: an ingest of unchanged input is a no-op, the flows run training and tuning with ``resume`` (a finished
seed or search is read back, an interrupted one continues from its checkpoints), scoring skips finished videos.

Caching: ``NO_CACHE`` throughout. Whether a step is done is decided by its outputs in storage (dataset manifests, a
seed's rows.json, a search's best_config.yaml, prediction files), not by Prefect's result store: that survives a lost
Prefect database, a different machine and a cleaned ``~/.prefect``, and never reports done for outputs that were
deleted.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from affect_core.errors import AffectError
from affect_core.storage import exists, read_bytes, resolve, write_bytes_atomic
from flows import jobs
from flows.retry import RETRIES, RETRY_DELAYS, RETRY_JITTER, retry_on_transient

PIPELINE_RECORD = "pipeline.json"
RETRYING = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": retry_on_transient,
    "cache_policy": NO_CACHE,
}


def evaluate_if_labelled(job: jobs.EvaluateJob) -> dict[str, Any] | None:
    """:func:`flows.jobs.run_evaluate`, or None when no scored video has labels (a scoring job of unlabelled
    videos has nothing to evaluate)."""
    try:
        return jobs.run_evaluate(job)
    except AffectError as exc:
        if "no labelled video" in str(exc):
            return None
        raise


def check_run(run_url: str, key: dict[str, Any], *, s3_endpoint: str | None = None) -> bool:
    """Record what a pipeline run is made of (``RUN_URL/pipeline.json``: dataset content hash and the parameters
    that shape its outputs) and refuse to resume a run made of something else, whose finished seeds and
    predictions would otherwise be reused. Returns True when an earlier attempt of the same run is resumed."""
    run = resolve(run_url, jobs.storage_options_for(run_url, s3_endpoint))
    record = run.join(PIPELINE_RECORD)
    wanted = json.loads(json.dumps(key, sort_keys=True))
    if exists(run.fs, record.path):
        previous = json.loads(read_bytes(run.fs, record.path))
        if previous != wanted:
            changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
            raise AffectError(
                f"{run.display()}: holds a pipeline run of other input or parameters ({', '.join(changed)} "
                "differ); choose a new --out (a '{version}' in it becomes the dataset version) or delete the old run"
            )
        return True
    write_bytes_atomic(run.fs, record.path, json.dumps(wanted, indent=2, sort_keys=True).encode())
    return False


ingest_task = task(jobs.run_ingest, name="ingest", **RETRYING)
tune_task = task(jobs.run_tune, name="tune", **RETRYING)
train_task = task(jobs.run_train, name="train", **RETRYING)
score_task = task(jobs.run_score, name="score", **RETRYING)
evaluate_task = task(evaluate_if_labelled, name="evaluate", **RETRYING)
report_task = task(jobs.run_report, name="report", **RETRYING)
check_run_task = task(check_run, name="check-run", **RETRYING)
promote_task = task(jobs.run_promote, name="promote", **RETRYING)
