"""The Prefect flows against a real Prefect server: outputs, artifacts, resume after a crash, schedule files.

Training and scoring run in this process (no RAY_ADDRESS); the search runs on an in-process Ray, the one tuner. The
pipeline on S3 with a real Ray cluster is in tests/test_infra.py (on the local stack).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from affect_core.errors import AffectError
from affect_core.scoring import finished_videos
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, write_corpus
from flows.retry import is_transient

REPO = Path(__file__).resolve().parents[1]
TINY = SynthConfig(videos_per_split=2, frames=300, appearance_dim=6, geometric_dim=8, test_labels=True)


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def prefect_api(prefect_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process talks to the session's Prefect server; training and scoring run in this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the run logs while the server is still up


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("flows") / "corpus"
    write_corpus(TINY, out, "avec2016")
    return str(out)


def run_flow(flow: Any, *args: Any, **kwargs: Any) -> tuple[Any, str]:
    """Run a flow; return (its result, its flow run id); fail the test if it did not complete."""
    state = flow(*args, return_state=True, **kwargs)
    assert state.is_completed(), state.message
    return state.result(), str(state.state_details.flow_run_id)


def artifacts(flow_run_ids: list[str] | None = None, keys: list[str] | None = None) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    filters = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids) if flow_run_ids else None,
        key=ArtifactFilterKey(any_=keys) if keys else None,
    )
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=filters)


def by_key(found: list[Any]) -> dict[str, Any]:
    return {a.key: a for a in found}


# ------------------------------------------------------------------------------------------ unit checks
def test_transient_errors_are_retried_and_bad_input_is_not() -> None:
    try:
        try:
            raise ConnectionRefusedError("connection refused")
        except OSError:
            raise AffectError("s3://b/x: writing version v failed; nothing was published") from None
    except AffectError as wrapped:
        assert is_transient(wrapped)  # the storage fault stays visible through `from None`
    assert not is_transient(AffectError("train_1.arff, row 3: expected 5 values"))
    assert not is_transient(FileNotFoundError("nope"))
    assert is_transient(TimeoutError())

    class NodeDiedError(Exception):  # named like Ray's, recognised by class name
        pass

    assert is_transient(NodeDiedError())


def test_schedule_files_agree() -> None:
    """schedules.yaml (affect serve) and prefect.yaml (prefect deploy) declare the same deployments."""
    from flows.deployments import build_deployments, flow_objects, load_schedules

    specs = load_schedules(REPO / "schedules.yaml")
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert [s.name for s in specs] == [d["name"] for d in declared]
    flows = flow_objects()
    for spec, deployment in zip(specs, declared, strict=True):
        path, function = deployment["entrypoint"].split(":")
        assert (REPO / path).is_file()
        module = __import__(path[:-3].replace("/", "."), fromlist=[function])
        assert getattr(module, function) is flows[spec.flow]
        assert deployment["schedules"] == [{"cron": spec.cron, "timezone": spec.timezone}]
        assert deployment["parameters"] == spec.parameters
        assert deployment["concurrency_limit"] == spec.concurrency_limit
        assert deployment["work_pool"]["name"] == "affect-pool"
    built = build_deployments(specs)
    assert [d.entrypoint for d in built][0] == "flows.workflows.ingest_flow"
    assert all(d.schedules and d.parameters for d in built)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "flow": "nope", "cron": "0 2 * * *"}, "flow 'nope' unknown"),
        ({"name": "x", "flow": "ingest", "cron": "99 2 * * *"}, "invalid cron"),
        ({"name": "x", "flow": "ingest", "interval": 5, "parameters": {"job": {"source": "a"}}}, "missing required"),
        ({"name": "x", "flow": "score", "interval": 5, "parameters": {"bogus": 1}}, "unknown parameter"),
        ({"name": "x", "flow": "score", "interval": 5, "parameters": {"job": {"actor": 1}}}, r"unknown.*\['actor'\]"),
        (
            {"name": "x", "flow": "pipeline", "interval": 5, "parameters": {"job": {"train": {"out": "elsewhere"}}}},
            "set by the pipeline",
        ),
        ({"name": "x", "flow": "ingest", "cron": "0 2 * * *", "interval": 3}, "exactly one of"),
    ],
)
def test_bad_schedules_file(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    from flows.deployments import load_schedules

    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({"deployments": [entry]}))
    with pytest.raises(AffectError, match=message):
        load_schedules(path)


def test_serve_without_server_is_one_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    result = subprocess.run(
        [sys.executable, "-m", "affect_cli.main", "serve", "--config", str(REPO / "schedules.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "PREFECT_API_URL is not set" in result.stderr and "ephemeral" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- flows on the server
@pytest.mark.services
def test_each_flow_produces_outputs_and_artifacts(prefect_api: str, corpus_dir: str, tmp_path: Path) -> None:
    from flows.jobs import IngestJob, ScoreJob, TrainJob, TuneJob
    from flows.workflows import ingest_flow, score_flow, train_flow, tune_flow

    dataset, tuning, run, preds = (str(tmp_path / n) for n in ("dataset", "tuning", "run", "preds"))
    ingest = IngestJob(source=corpus_dir, dataset_url=dataset, layout="avec2016", progress=False)
    first, ingest_id = run_flow(ingest_flow, ingest)
    assert not first["unchanged"] and first["videos"] == 6
    again, again_id = run_flow(ingest_flow, ingest)
    assert again["unchanged"] and again["version"] == first["version"]
    assert "unchanged (skipped" in by_key(artifacts([again_id]))["affect-ingest"].data

    tune = TuneJob(dataset_url=dataset, out=tuning, num_samples=2, max_concurrent=2, epochs=1, progress=False)
    outcome, tune_id = run_flow(tune_flow, tune)
    assert outcome.trials == 2 and (tmp_path / "tuning" / "best_config.yaml").is_file()
    tune_artifacts = by_key(artifacts([tune_id]))
    assert "best dev CCC" in tune_artifacts["affect-tune"].data
    assert tune_artifacts["affect-tune-best-config"].type == "markdown"  # link artifacts render as markdown
    stamp = (tmp_path / "tuning" / "best_config.yaml").stat().st_mtime_ns
    reread, _ = run_flow(tune_flow, tune)  # a finished search is read back, not run again
    assert reread.best_trial == outcome.best_trial and reread.trials == 2
    assert (tmp_path / "tuning" / "best_config.yaml").stat().st_mtime_ns == stamp

    train = TrainJob(
        dataset_url=dataset,
        out=run,
        dimension="both",
        seeds=2,
        epochs=1,
        config=f"{tuning}/best_config.yaml",
        model="lstm-kf",
        seeds_per_worker=2,  # every option of the job reaches the flow
        progress=False,
    )
    outputs, train_id = run_flow(train_flow, train)
    assert set(outputs) == {"results", "summary", "model"}
    table = pq.read_table(f"{run}/results.parquet")
    assert sorted(set(table.column("seed").to_pylist())) == [0, 1]
    results_md = by_key(artifacts([train_id]))["affect-train-results"].data
    assert "## dev split" in results_md and "## Learned lag" in results_md and "LSTM-KF-AA" in results_md

    score = ScoreJob(data_url=dataset, model_url=f"{run}/model", out=preds, progress=False)
    scored, score_id = run_flow(score_flow, score)
    assert scored["videos"] == 6 and scored["frames"] == 6 * 300
    assert len(finished_videos(resolve(preds))) == 6 and (Path(preds) / "_evaluation.json").is_file()
    assert "| dev | arousal | 2 |" in by_key(artifacts([score_id]))["affect-score"].data
    rescored, _ = run_flow(score_flow, score)
    assert rescored["skipped"] == 6 and rescored["frames"] == 0


@pytest.mark.services
@pytest.mark.slow
def test_pipeline_resumes_after_a_crash(
    prefect_api: str, corpus_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline that crashed in scoring, run again: ingest no-op, search and seeds not redone, report written."""
    from affect_core import scoring
    from flows.jobs import PipelineJob, TrainJob, TuneJob
    from flows.workflows import pipeline_flow

    dataset, run = str(tmp_path / "dataset"), str(tmp_path / "run")

    def job(epochs: int = 1) -> PipelineJob:
        return PipelineJob(
            source=corpus_dir,
            dataset_url=dataset,
            out=run,
            progress=False,
            report_videos=1,
            tune=TuneJob(num_samples=1, epochs=1),
            train=TrainJob(seeds=2, epochs=epochs, model="lstm-kf", align="adaptive"),
        )

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("worker lost its mind")  # not transient: fails at once, no retry

    monkeypatch.setattr(scoring, "score_dataset", crash)
    state = pipeline_flow(job(), return_state=True)
    assert state.is_failed()
    seed_rows = sorted(Path(run, "seeds").glob("*/rows.json"))
    assert len(seed_rows) == 4
    stamps = {p: p.stat().st_mtime_ns for p in [*seed_rows, Path(run, "tuning", "best_config.yaml")]}
    versions_before = sorted(Path(dataset, "_delta_log").glob("*.json"))

    monkeypatch.undo()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result, run_id = run_flow(pipeline_flow, job())
    assert sorted(Path(dataset, "_delta_log").glob("*.json")) == versions_before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing redone
    assert len(finished_videos(resolve(str(Path(run, "predictions"))))) == 6
    report_dir = Path(run, "report")
    assert {p.name for p in report_dir.iterdir()} >= {
        "summary.md",
        "ablation.png",
        "lag.png",
        "curves-dev_1.png",
        "tuning.png",
    }
    assert result["report"].endswith("report/summary.md")
    keys = by_key(artifacts([run_id]))
    assert {"affect-report", "affect-report-ablation", "affect-report-lag", "affect-report-tuning"} <= set(keys)
    assert keys["affect-report-ablation"].data.startswith("[ablation.png](file://")

    with pytest.raises(AffectError, match="other input or parameters"):
        pipeline_flow(job(epochs=2))


def test_the_demo_trains_what_it_tuned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's pipeline searches the model its training trains, and trains the best configuration found: the
    trials, best_config.yaml and the final model name one model."""
    import logging

    from flows import workflows
    from flows.demo import DemoSettings, run_demo

    seen: dict[str, Any] = {}

    class Trained(Exception):
        pass

    def tune_flow(job: Any) -> Any:
        seen["tune"] = job
        return type("Outcome", (), {"best_config_url": "best_config.yaml", "best_dev_ccc": 0.5})()

    def train_flow(job: Any) -> None:
        seen["train"] = job
        raise Trained

    monkeypatch.setattr(workflows, "pipeline_flow", workflows.pipeline_flow.fn)  # the flow's body, without Prefect
    monkeypatch.setattr(workflows, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(workflows, "ingest_flow", lambda job: {"version": "1", "content_hash": "h"})
    monkeypatch.setattr(workflows, "check_run_task", lambda *a, **k: False)
    monkeypatch.setattr(workflows, "tune_flow", tune_flow)
    monkeypatch.setattr(workflows, "train_flow", train_flow)
    settings = DemoSettings(out=tmp_path / "demo", videos_per_split=1, frames=200, progress=False)
    with pytest.raises(Trained):
        run_demo(settings, echo=lambda _: None)
    tune, train = seen["tune"], seen["train"]
    assert tune.num_samples == settings.trials and train.config.endswith("tuning/best_config.yaml")
    assert tune.model == train.model == settings.model  # every trial trains the model the training trains


def test_a_pipeline_told_two_models_is_refused() -> None:
    from flows.jobs import TrainJob, TuneJob
    from flows.workflows import searched_model

    assert searched_model(TuneJob(), TrainJob()) is None  # the search tries every model; the best one is trained
    assert searched_model(TuneJob(model="lstm-ekf"), TrainJob()) == "lstm-ekf"
    with pytest.raises(AffectError, match="give one model"):
        searched_model(TuneJob(model="lstm-ekf"), TrainJob(model="lstm-kf"))


def test_the_shipped_deployments_run_on_a_cluster_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GPU ask of schedules.yaml and prefect.yaml becomes 0 on a CPU-only cluster (nothing to add either) and
    stays a GPU share where the cluster has GPUs; Prefect takes the asks into the jobs as they are written."""
    from flows import runner
    from flows.deployments import flow_objects, load_schedules
    from tuning import cluster as tuning_cluster

    def gpu_asks(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [v for k, v in value.items() if k.startswith("gpus_per_")] + [
                a for v in value.values() for a in gpu_asks(v)
            ]
        return []

    monkeypatch.setattr(tuning_cluster, "autoscaler_gpus", lambda: 0.0)
    specs = load_schedules(REPO / "schedules.yaml")
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    asks = [a for s in specs for a in gpu_asks(s.parameters)] + [a for d in declared for a in gpu_asks(d["parameters"])]
    assert len(asks) == 10
    for ask in asks:
        assert runner.gpus_to_ask(ask, cluster_gpus=0.0) == 0.0
        assert 0 < runner.gpus_to_ask(ask, cluster_gpus=4.0) <= 1
    flows = flow_objects()
    for spec in specs:
        job = flows[spec.flow].validate_parameters(spec.parameters)["job"]
        for ask in gpu_asks(dataclasses.asdict(job)):
            assert isinstance(ask, str) and ask.startswith("auto:")


def test_a_flow_run_prints_no_telemetry_error(tmp_path: Path) -> None:
    """The ephemeral Prefect server of a one-off run sends no telemetry (so, offline, it logs no error about it)."""
    code = (
        "import flows\n"
        "from prefect import flow\n"
        "from prefect.settings import get_current_settings\n"
        "print('analytics', get_current_settings().server.analytics_enabled)\n"
        "print('result', flow(lambda: 1, name='tiny')())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert "result 1" in result.stdout, result.stderr
    assert "analytics False" in result.stdout
    assert "telemetry" not in result.stderr.lower() and "| ERROR" not in result.stderr
