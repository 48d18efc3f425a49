# ruff: noqa: F811 - the fixtures imported from test_flows are test arguments here
"""The flows with real services: a schedule that fires on a Prefect server, a storage outage survived by retry, and
every deployment of schedules.yaml run through its flow on SeaweedFS S3.

The pipeline end to end on SeaweedFS S3 with a real two-node Ray cluster (RAY_ADDRESS) and a Prefect server runs on
the local stack that `make stack-up` starts: tests/test_infra.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import s3fs
import yaml
from test_flows import corpus_dir, prefect_api, run_flow  # noqa: F401 - fixtures

pytestmark = pytest.mark.services
OUTAGE_S = 15.0  # longer than s3fs's and botocore's own retries, shorter than the task's retry budget


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started here with start_new_session=True, and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return
    os.killpg(process.pid, signal.SIGKILL)  # a flow run subprocess left behind


def completed_runs(deployment_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
            ),
        )


@pytest.mark.slow
def test_a_served_schedule_fires(prefect_api: str, corpus_dir: str, tmp_path: Path) -> None:
    """`affect serve` with a 5 s interval: a scheduled flow run completes, then everything is stopped."""
    schedules = tmp_path / "schedules.yaml"
    dataset = tmp_path / "dataset"
    entry = {
        "name": "every-few-seconds",
        "flow": "ingest",
        "interval": 5,
        "parameters": {"job": {"source": corpus_dir, "dataset_url": str(dataset), "layout": "avec2016"}},
    }
    schedules.write_text(yaml.safe_dump({"deployments": [entry]}))
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "affect_cli.main", "serve", "--config", str(schedules)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 240
        while not completed_runs("every-few-seconds"):
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
        run = completed_runs("every-few-seconds")[0]
        assert run.auto_scheduled and run.parameters["job"]["dataset_url"] == str(dataset)
        assert (dataset / "_delta_log").is_dir()
    finally:
        stop_group(serve)
        log.close()
    assert serve.poll() is not None


def test_storage_outage_is_retried(
    prefect_api: str,
    corpus_dir: str,
    s3_server: Any,
    s3_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The S3 server is down when the ingest task starts and comes back after the storage client's own retries
    gave up: the task fails, retries after its backoff and succeeds; the dataset is complete and readable."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from affect_core.data.dataset import read_corpus
    from flows.jobs import IngestJob
    from flows.workflows import ingest_flow

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    dataset = f"{s3_url}/dataset"
    s3_server.stop()
    restart = threading.Timer(OUTAGE_S, s3_server.start)
    restart.start()
    try:
        job = IngestJob(source=corpus_dir, dataset_url=dataset, s3_endpoint=s3_server.endpoint_url, progress=False)
        result, run_id = run_flow(ingest_flow, job)
    finally:
        restart.join()
        if not s3_server.running:
            s3_server.start()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    ingest_run = next(r for r in runs if r.name.startswith("ingest"))
    assert ingest_run.run_count >= 2, "the first attempt should have failed while S3 was down"
    assert not result["unchanged"] and result["videos"] == 6
    assert len(read_corpus(dataset).videos) == 6


# The sizes of the deployments' searches and trainings, and the GPUs they ask for, cut to what a 2-core machine
# without a GPU runs in minutes; every other parameter (URLs, layout, models, aliases, limits) is the deployment's own.
SMALL = {
    "num_samples": 1,
    "max_concurrent": 1,
    "epochs": 1,
    "seeds": 1,
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
    "cpus_per_seed": 1,
    "gpus_per_seed": 0,
    "gpus_per_actor": 0,
    "actors": 1,
}


def small(parameters: Any) -> Any:
    """``parameters`` with the sizes of :data:`SMALL`, at every level (a pipeline's steps included)."""
    if isinstance(parameters, dict):
        return {k: SMALL[k] if k in SMALL else small(v) for k, v in parameters.items()}
    return parameters


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_deployment_runs_through_its_flow_with_its_own_parameters(
    prefect_api: str,
    s3_server: Any,
    corpus_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nightly-ingest, weekly-tune, weekly-pipeline and nightly-score, in that order, each with the parameters of
    schedules.yaml (= prefect.yaml's) on a SeaweedFS S3 with the bucket they name: the search writes a dated run,
    the pipeline promotes its model to the alias nightly-score reads, and scoring uses that model."""
    import datetime as dt

    from flows.deployments import flow_objects, load_schedules

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    repo = Path(__file__).resolve().parents[1]
    specs = load_schedules(repo / "schedules.yaml")
    declared = yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"]
    assert [d["parameters"] for d in declared] == [s.parameters for s in specs]
    assert all(s.concurrency_limit == 1 for s in specs)
    urls = [v for s in specs for v in _strings(s.parameters) if "://" in v]
    assert urls and all(u.startswith("s3://affect/") for u in urls), urls  # no local paths in short-lived pods

    s3_server.create_bucket("affect")
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    fs.put(corpus_dir, "affect/recordings", recursive=True)
    flows = flow_objects()
    for spec in specs:
        flow = flows[spec.flow]
        state = flow(**flow.validate_parameters(small(spec.parameters)), return_state=True)
        assert state.is_completed(), f"{spec.name}: {state.message}"

    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert fs.exists(f"affect/tuning/{today}/best_config.yaml")
    runs = [p for p in fs.ls("affect/runs", refresh=True) if fs.exists(f"{p}/report/summary.md")]
    assert len(runs) == 1, fs.ls("affect/runs")  # the run of the one dataset version
    run = runs[0]
    assert fs.exists(f"{run}/tuning/best_config.yaml") and fs.exists(f"{run}/predictions/_evaluation.json")
    alias = json.loads(fs.cat("affect/models/current/alias.json"))
    assert alias["model"] == f"s3://{run}/model" and [e["action"] for e in alias["history"]] == ["promote"]
    from affect_core.scoring import read_predictions

    predictions = read_predictions(f"s3://affect/predictions/{today}", s3_server.storage_options())
    assert len(predictions) == 6
    scored_by = {m for video in predictions for m in predictions[video].column("model_id").to_pylist()}
    assert scored_by == {alias["history"][-1]["model_id"]}


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [value] if isinstance(value, str) else []
