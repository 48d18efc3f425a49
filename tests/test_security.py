"""Security: nothing executes on load, nothing escapes its root, no secret leaks, the cluster asks for a token.

Tested elsewhere and not repeated here: a planted pickle in a model bundle is refused
(tests/test_artifact.py::test_a_planted_pickle_is_refused_and_never_executed); video ids in input corpora that would
escape the dataset root (tests/test_bad_input.py, cases *-id-escapes-root); every service listens on 127.0.0.1 only
and Ray/SeaweedFS logs hold no secret (tests/test_services.py); S3 keys given in storage options reach an in-process
Ray's workers through their node's environment, never through Ray or pickles
(tests/test_ray_score.py::test_s3_keys_reach_workers_through_their_node_environment_never_through_ray).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs

from affect_core.data.dataset import dataset_metadata, dataset_schema, video_table
from affect_core.errors import AffectError
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import load_checkpoint, save_checkpoint
from affect_services import LocalStack
from tests.test_ray_train import affect, check_run, make_dataset

PWNED = "/tmp/affect-security-pwned"
SMALL = SynthConfig(videos_per_split=1, frames=60, appearance_dim=2, geometric_dim=0, lag_s=0.4)


# A Python expression, for a Ray driver's script: the GCS job table as Ray keeps it (each job's config and
# runtime_env included), as text to search.
JOB_TABLE_TEXT = (
    "b''.join(ray._private.state.state._connect_and_get_accessor().get_job_table("
    "skip_submission_job_info_field=False, skip_is_running_tasks_field=True)).decode('latin-1')"
)
# Prints every job the job server at RAY_ADDRESS knows, with its entrypoint, metadata and runtime_env.
LIST_JOBS = (
    "import os; from ray.job_submission import JobSubmissionClient; "
    "print(JobSubmissionClient(os.environ['RAY_ADDRESS']).list_jobs())"
)


def files_holding(root: str | os.PathLike[str], secret: str) -> list[str]:
    """Every regular file under ``root`` (symbolic links to directories followed: a Ray temp dir may be one) whose
    bytes contain ``secret``."""
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    if secret.encode() in handle.read():
                        found.append(path)
    return found


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def test_a_planted_pickle_checkpoint_is_refused_and_never_executed(tmp_path):
    import torch

    good = tmp_path / "good.pt"
    save_checkpoint(str(good), {"epoch": 3, "model": {"w": torch.ones(2)}})
    assert load_checkpoint(str(good))["epoch"] == 3
    bad = tmp_path / "arousal-seed0.pt"
    bad.write_bytes(pickle.dumps({"epoch": 3, "model": Exploit()}))
    if os.path.exists(PWNED):
        os.unlink(PWNED)
    with pytest.raises(AffectError, match=r"arousal-seed0.pt: not a loadable training checkpoint"):
        load_checkpoint(str(bad))
    torch_zip = tmp_path / "torch-format.pt"  # the same payload in torch's own zip format
    torch.save({"model": Exploit()}, torch_zip)
    with pytest.raises(AffectError, match="not a loadable training checkpoint"):
        load_checkpoint(str(torch_zip))
    assert not os.path.exists(PWNED)


def write_features_with_ids(path: Path, ids: list[str]) -> None:
    """A bare Parquet features URL in the dataset schema whose videos carry the given ids."""
    corpus = generate_corpus(SMALL)
    corpus.metadata.pop("feature_sets", None)
    schema = dataset_schema(corpus.feature_dim, dataset_metadata(corpus, "sha256:x", "synth", "generated"))
    with pq.ParquetWriter(path, schema) as writer:
        for video, video_id in zip(corpus.videos, ids, strict=False):
            video.video_id = video_id
            writer.write_table(video_table(video, schema))


@pytest.mark.parametrize("bad_id", ["../../escaped", "a/../../../escaped", "/tmp/escaped", "nested/escaped"])
def test_video_ids_in_a_features_url_cannot_write_outside_the_predictions_url(bad_id, tmp_path):
    from typer.testing import CliRunner

    from affect_cli.main import app
    from affect_core.artifact import ModelBundle, TrainedModel, save_bundle
    from affect_core.config import ModelConfig, RunConfig, TrainConfig
    from affect_core.training import train_model

    features = tmp_path / "in" / "features.parquet"
    features.parent.mkdir()
    write_features_with_ids(features, ["dev_1", bad_id])
    corpus = generate_corpus(SMALL)
    config = RunConfig(model=ModelConfig(model="baseline", align="none"), train=TrainConfig(max_epochs=1))
    result = train_model(corpus.split("train"), corpus.split("dev"), config, progress=False)
    trained = TrainedModel("arousal", result.model, result.transform, result.config, result.metrics)
    bundle = ModelBundle([trained], corpus.feature_names, corpus.feature_set, corpus.fps)
    save_bundle(bundle, str(tmp_path / "model"))
    preds = tmp_path / "deep" / "er" / "preds"
    before = {p for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(app, ["score", str(features), "--model", str(tmp_path / "model"), "--out", str(preds)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "would escape the dataset root" in lines[0] and "preds" in lines[0], result.stderr
    assert {p for p in tmp_path.rglob("*")} == before, "scoring wrote something"
    assert not Path("/tmp/escaped.parquet").exists() and not Path("/tmp/part-").exists()


@pytest.mark.services
@pytest.mark.slow
def test_no_secret_in_any_output_of_a_pipeline_on_s3(s3_server, s3_url, tmp_path):
    """With the S3 secret and a planted token in the environment, run synth, ingest, train, score, evaluate and a
    failing command on S3, then look for either value in stdout/stderr, every object written, and the S3 log."""
    token = "planted-token-7f3a9c1e5b"
    env = {**s3_server.env(), "AWS_SESSION_TOKEN_UNUSED": token, "PREFECT_API_KEY": token}
    secret = env["AWS_SECRET_ACCESS_KEY"]
    assert secret == s3_server.secret_key and len(secret) >= 20
    corpus, dataset, run, preds = tmp_path / "corpus", f"{s3_url}/dataset", f"{s3_url}/run", f"{s3_url}/preds"
    commands = [
        ["synth", corpus, "--layout", "csv", "--videos-per-split", "2", "--frames", "300", "--appearance-dim", "6"],
        ["ingest", corpus, dataset, "--layout", "csv", "--no-progress"],
        ["train", dataset, "--out", run, "--dimension", "arousal", "--model", "lstm-kf", "--epochs", "1"],
        ["score", dataset, "--model", f"{run}/model", "--out", preds, "--no-progress"],
        ["evaluate", preds, dataset],
        ["score", dataset, "--model", f"{s3_url}/no-model", "--out", f"{s3_url}/p2", "--no-progress"],
        ["train", dataset, "--out", f"{s3_url}/run2", "--config", f"{s3_url}/no-config.yaml"],
    ]
    outputs = []
    for number, command in enumerate(commands):
        done = affect([str(part) for part in command], env, timeout=300)
        outputs.append(done.stdout + done.stderr)
        assert (done.returncode == 0) == (number < 5), done.stderr[-3000:]
    assert "error: " in outputs[-2] and "error: " in outputs[-1]
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    written = {path: fs.cat_file(path) for path in fs.find(s3_url.removeprefix("s3://"))}
    assert any(path.endswith("summary.md") for path in written) and any("_delta_log" in p for p in written)
    files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    log = s3_server.log_path.read_bytes()
    for value in (secret, token, s3_server.access_key + ":" + secret):
        assert all(value not in text for text in outputs), value
        leaked = [path for path, data in {**written, **files, "s3.log": log}.items() if value.encode() in data]
        assert leaked == [], leaked


@pytest.mark.services
def test_the_ray_cluster_refuses_a_driver_without_its_token(ray_cluster, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    # Alive nodes only: an earlier test may have killed and restarted a worker, which leaves a dead entry behind.
    probe = "import ray; ray.init(logging_level='ERROR'); print('connected', sum(n['Alive'] for n in ray.nodes()))"
    # Nothing inherited may carry the real token (an earlier driver in this process may have exported it).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env = {**inherited, **ray_cluster.env(), "RAY_AUTH_TOKEN_PATH": str(wrong), "RAY_AUTH_TOKEN": "0" * 64}
    # Each try is refused at once; the driver gives up after 3 tries (1 s apart) instead of Ray's default 20.
    env["RAY_gcs_server_port_wait_time_s"] = "3"
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a driver with the wrong token neither connected nor failed within 120 s")
    assert done.returncode != 0 and "connected" not in done.stdout, done.stdout + done.stderr[-2000:]
    assert "InvalidAuthToken" in done.stderr, done.stderr[-2000:]  # refused for its token, not for anything else
    right = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **ray_cluster.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert right.returncode == 0 and "connected 2" in right.stdout, right.stderr[-2000:]


@pytest.mark.services
@pytest.mark.slow
def test_s3_work_on_ray_takes_keys_from_the_nodes_and_no_ray_log_or_job_table_holds_them(tmp_path):
    """The local stack's Ray nodes have its S3 keys in their environment, so a training run on S3 submitted to its job
    server completes (the job's driver and workers read them there); and a run on an in-process Ray as well. Then no
    file of any Ray session (the stack's nodes and the in-process Ray), no job in the job server's table and no
    output holds the secret."""
    with LocalStack(tmp_path / "stack", ray_startup_timeout=300) as stack:  # a loaded 2-core machine is slow to start
        env = stack.env()
        secret = env["AWS_SECRET_ACCESS_KEY"]
        assert len(secret) >= 20
        base = f"s3://{stack.bucket}/{uuid.uuid4().hex}"
        dataset = make_dataset(tmp_path / "corpus", f"{base}/dataset", stack.s3.storage_options())
        args = ["--dimension", "arousal", "--model", "lstm-kf", "--epochs", "1", "--seeds", "1", "--no-progress"]
        on_stack = affect(["train", dataset, "--out", f"{base}/stack-run", *args], env, timeout=600)
        assert on_stack.returncode == 0, on_stack.stderr[-3000:]
        assert "submitted Ray job" in on_stack.stderr
        check_run(f"{base}/stack-run", stack.s3.storage_options(), seeds=1)

        in_process_tmp = Path(tempfile.mkdtemp(prefix="affect-rt-"))  # short: Ray's unix socket paths
        try:
            local = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AFFECT_RAY"))}
            local.update({**stack.s3.env(), "RAY_TMPDIR": str(in_process_tmp), "RAY_USAGE_STATS_ENABLED": "0"})
            command = [sys.executable, "-m", "affect_cli.main", "train", dataset, "--out", f"{base}/local-run"]
            in_process = subprocess.run(
                [*command, *args, "--ray"], env=local, capture_output=True, text=True, timeout=600
            )
            assert in_process.returncode == 0, in_process.stderr[-3000:]
            check_run(f"{base}/local-run", stack.s3.storage_options(), seeds=1)
            assert list((in_process_tmp / "ray").glob("session_2*/logs/*"))
            assert files_holding(in_process_tmp, secret) == []
        finally:
            shutil.rmtree(in_process_tmp, ignore_errors=True)

        jobs = subprocess.run(
            [sys.executable, "-c", LIST_JOBS], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
        )
        assert jobs.returncode == 0 and "TrainJob" in jobs.stdout, jobs.stderr[-2000:]
        ray_files = files_holding(stack.ray.base_dir, secret)
        sessions = list(Path(stack.ray.base_dir, "tmp").glob("*/session_2*/logs/*"))
        assert sessions, "no Ray session logs found to search"
        assert ray_files == [], ray_files
        for text in (jobs.stdout, on_stack.stdout + on_stack.stderr, in_process.stdout + in_process.stderr):
            assert secret not in text


def test_the_package_requires_a_torch_whose_weights_only_load_runs_no_code():
    """torch.load(weights_only=True) before 2.6 can still run code from a crafted file (the checkpoint loader relies
    on it)."""
    from packaging.requirements import Requirement

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    torch = Requirement(re.search(r'^    "(torch[^"]*)"', pyproject, re.MULTILINE).group(1))
    assert not torch.specifier.contains("2.5.1") and torch.specifier.contains("2.6.0")
