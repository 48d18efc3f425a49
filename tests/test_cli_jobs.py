"""One description per job: the CLI commands and the flows are built from the job dataclasses of flows/jobs.py, so
every option of a job reaches both; one place decides local or Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from affect_cli.job_options import job_command
from affect_cli.main import app
from affect_core.errors import AffectError
from flows import jobs, runner
from tuning import cluster as tuning_cluster

COMMANDS = {
    "ingest": jobs.IngestJob,
    "tune": jobs.TuneJob,
    "train": jobs.TrainJob,
    "score": jobs.ScoreJob,
    "evaluate": jobs.EvaluateJob,
    "report": jobs.ReportJob,
    "pipeline": jobs.PipelineJob,
    "promote": jobs.PromoteJob,
}


def cli_names(kind: type, prefix: str = "", top: bool = True) -> set[str]:
    """The command-line parameter names a job should have: its fields, a step's fields with its prefix, except
    the fields the pipeline sets."""
    names = set()
    for field, hint in jobs.job_fields(kind):
        if jobs.is_job(hint):
            names |= cli_names(hint, prefix + field.metadata["prefix"], top=False)
        elif top or field.name not in jobs.PIPELINE_WIRING:
            names.add((prefix + field.name).replace("-", "_"))
    return names


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_field_of_a_job_is_an_option_of_its_command(name: str) -> None:
    command = typer.main.get_command(app).commands[name]
    assert {p.name for p in command.params} == cli_names(COMMANDS[name])


def test_options_given_on_the_command_line_arrive_in_the_job() -> None:
    received: list[Any] = []
    probe = typer.Typer()
    probe.command("pipeline")(job_command(jobs.PipelineJob, received.append))
    probe.command("other")(lambda: None)
    argv = ["pipeline", "src", "data", "--out", "runs/x", "--seeds-per-worker", "3", "--tune-grace-period", "2",
            "--cpus-per-seed", "0.5", "--score-actors", "4", "--layout", "csv", "--tune-num-samples", "0",
            "--score-split", "dev", "--score-split", "test", "--no-ray"]  # fmt: skip
    result = CliRunner().invoke(probe, argv)
    assert result.exit_code == 0, result.output
    (job,) = received
    assert (job.source, job.dataset_url, job.out) == tuple(os.path.abspath(p) for p in ("src", "data", "runs/x"))
    assert (job.train.seeds_per_worker, job.train.cpus_per_seed, job.train.ray) == (3, 0.5, False)
    assert (job.tune.grace_period, job.tune.num_samples) == (2, 0)
    assert (job.score.actors, job.score.split) == (4, ["dev", "test"])
    assert job.ingest.layout == "csv"
    assert job.train.out == "" and job.score.model_url == ""  # set by the pipeline, not options


@pytest.mark.parametrize("flow_name", ["ingest", "tune", "train", "score", "pipeline"])
def test_each_flow_takes_its_job(flow_name: str) -> None:
    from flows.deployments import flow_objects

    flow = flow_objects()[flow_name]
    hints = typing.get_type_hints(flow.fn)
    assert hints["job"] is COMMANDS[flow_name]
    # a deployment's parameters become the job, sub-jobs included
    full = {f.name: getattr(COMMANDS[flow_name](), f.name) for f in dataclasses.fields(COMMANDS[flow_name])}
    if flow_name == "pipeline":
        full["train"] = {"seeds_per_worker": 2, "cpus_per_seed": 2.0}
    validated = flow.validate_parameters({"job": full})["job"]
    assert isinstance(validated, COMMANDS[flow_name])
    if flow_name == "pipeline":
        assert (validated.train.seeds_per_worker, validated.train.cpus_per_seed) == (2, 2.0)


def test_one_place_decides_local_or_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not runner.use_ray(None) and runner.use_ray(True)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert runner.use_ray(None) and not runner.use_ray(False)


def test_a_step_of_the_pipeline_cannot_be_given_what_the_pipeline_sets() -> None:
    step = jobs.TrainJob(out="elsewhere")
    with pytest.raises(AffectError, match="TrainJob.out is set by the pipeline"):
        jobs.wire(step, out="runs/x", dataset_url="data")
    wired = jobs.wire(jobs.TrainJob(seeds=3), out="runs/x", dataset_url="data")
    assert (wired.out, wired.dataset_url, wired.seeds) == ("runs/x", "data", 3)


def test_a_job_without_its_urls_is_refused() -> None:
    with pytest.raises(AffectError, match="TrainJob: missing dataset_url, out"):
        jobs.run_train(jobs.TrainJob())


def test_the_runner_places_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local, driver, ray_job = runner.Placement.LOCAL, runner.Placement.RAY, runner.Placement.RAY_JOB
    assert [runner.placement(j) for j in (jobs.IngestJob(), jobs.TrainJob(), jobs.ScoreJob())] == [local] * 3
    assert runner.placement(jobs.TuneJob()) is driver  # the search is always Ray Tune
    assert runner.placement(jobs.IngestJob(parallel=True)) is driver
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster to join: work is driven from here
    assert [runner.placement(j) for j in (jobs.IngestJob(), jobs.TrainJob(), jobs.TuneJob())] == [driver] * 3
    assert runner.placement(jobs.ScoreJob(ray=False)) is local
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a job server: work is submitted as a Ray job
    assert [runner.placement(j) for j in (jobs.IngestJob(), jobs.TrainJob(), jobs.TuneJob())] == [ray_job] * 3


def test_ingest_through_a_job_server_runs_as_a_ray_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """--parallel turns on with RAY_ADDRESS; a job server's address then sends the ingest there as a Ray job (instead
    of refusing the address), and the job's driver on the cluster runs it with Ray tasks."""
    from affect_core.data.dataset import IngestResult
    from flows import ray_job

    submitted: list[tuple[Any, str]] = []

    def submit(job: Any, address: str) -> dict[str, Any]:
        submitted.append((job, address))
        done = IngestResult("data", "3", "h", False, 10, 2, 1.0, 100, 2, 1)
        return json.loads(json.dumps(dataclasses.asdict(done)))  # as the Ray job prints it

    monkeypatch.setattr(ray_job, "submit", submit)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    result = jobs.run_ingest(jobs.IngestJob(source="s3://corpus", dataset_url="s3://data"))
    assert isinstance(result, IngestResult) and (result.version, result.videos) == ("3", 2)
    ((job, address),) = submitted
    assert address == "http://127.0.0.1:8265" and (job.source, job.dataset_url) == ("s3://corpus", "s3://data")
    assert runner.on_cluster(job).parallel is True  # what flows.ray_job_driver runs on the cluster


def test_gpu_asks_follow_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A number is asked for as given (KubeRay's GPU asks stay); auto:FRACTION only where GPUs are or can be added."""
    monkeypatch.setattr(tuning_cluster, "autoscaler_gpus", lambda: 0.0)
    assert runner.gpus_to_ask(0.5, cluster_gpus=0) == 0.5
    assert runner.gpus_to_ask("auto:0.5", cluster_gpus=0) == 0.0
    assert runner.gpus_to_ask("auto:0.5", cluster_gpus=2) == 0.5
    assert runner.gpus_to_ask("auto", cluster_gpus=1) == 1.0
    monkeypatch.setattr(tuning_cluster, "autoscaler_gpus", lambda: 8.0)  # none now; the autoscaler can add GPU nodes
    assert runner.gpus_to_ask("auto:0.25", cluster_gpus=0) == 0.25
    for bad in ("-1", "auto:0", "lots"):
        with pytest.raises(AffectError, match="GPU ask"):
            runner.parse_gpus(bad)


def test_relative_local_paths_on_the_command_line_become_absolute(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`affect train ds --out run --ray`: Ray's workers run in their trial's folder and a Ray job's driver on the
    head, so a relative path reaching them named nothing ("ds: no dataset versions"). The command line hands every
    URL field on as an absolute path; URLs with a scheme and non-URL options are left as they are."""
    from affect_cli.job_options import build_job

    monkeypatch.chdir(tmp_path)
    train = build_job(jobs.TrainJob, {"dataset_url": "ds", "out": "runs/one", "config": "best.yaml", "model": "x"})
    assert (train.dataset_url, train.out, train.config) == (
        str(tmp_path / "ds"),
        str(tmp_path / "runs" / "one"),
        str(tmp_path / "best.yaml"),
    )
    assert train.model == "x"
    score = build_job(jobs.ScoreJob, {"data_url": "s3://b/ds@3", "model_url": "memory://m", "out": "/abs/p"})
    assert (score.data_url, score.model_url, score.out) == ("s3://b/ds@3", "memory://m", "/abs/p")
    pipeline = build_job(jobs.PipelineJob, {"source": "corpus", "dataset_url": "ds", "out": "run", "promote_to": "c"})
    assert pipeline.source == str(tmp_path / "corpus") and pipeline.promote_to == str(tmp_path / "c")
