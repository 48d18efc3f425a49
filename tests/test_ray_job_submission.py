"""RAY_ADDRESS as a Ray job server (http://127.0.0.1:<port>): `affect train`, `affect score` and `affect tune` submit
their Ray work as Ray jobs to a local head whose job server listens on 127.0.0.1, stream the job's logs, and fail with
the job's own error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from affect_services import RayCluster
from tests.test_ray_train import affect, is_loopback, listening_addresses, make_dataset

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def job_server(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster) -> Iterator[dict[str, str]]:
    """The environment that reaches a local Ray head's job server: ``RAY_ADDRESS=http://127.0.0.1:<port>`` and the
    cluster's token (token authentication on, as on the KubeRay cluster).

    The head is started as every real one is, by ``ray start`` with a temp dir of its own (``RayCluster``, as the
    local stack and KubeRay do), which records the head's address in that directory. A job's supervisor finds the
    cluster its driver joins from there; a head started by ``ray.init()`` records none, and the supervisor then takes
    any Ray instance running on the machine, such as the session's other Ray cluster, whose token the driver does
    not hold ("Failed to connect to Ray cluster"). The session's ``ray_cluster`` is kept running beside it, as in
    the whole suite and on a machine running other Ray instances, so that the jobs here must find their own head."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray-head"), head_cpus=2, worker_nodes=0, job_server=True)
    cluster.start()
    try:
        sockets = set().union(*(listening_addresses(psutil.Process(pid)) for pid in cluster.pids()))
        assert all(is_loopback(ip) for ip, _, _ in sockets), sockets
        yield {
            "RAY_ADDRESS": cluster.job_server_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(cluster.token_path),
        }
    finally:
        cluster.stop()


def test_train_score_and_tune_run_as_ray_jobs(job_server: dict[str, str], tmp_path: Path) -> None:
    env = job_server
    dataset = make_dataset(tmp_path / "corpus", str(tmp_path / "dataset"))
    run = tmp_path / "run"
    train = ["train", dataset, "--out", str(run), "--dimension", "arousal", "--model", "lstm-kf", "--seeds", "2",
             "--epochs", "1", "--no-progress"]  # fmt: skip
    done = affect(train, env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "submitted Ray job" in done.stderr and "trained arousal x 2 seed(s)" in done.stdout
    results = pq.read_table(run / "results.parquet").to_pandas()
    assert sorted(results["seed"].unique()) == [0, 1] and results["node"].str.len().min() > 0

    scored = affect(["score", dataset, "--model", str(run / "model"), "--out", str(tmp_path / "p"),
                     "--no-progress"], env, timeout=600)  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    from affect_core.scoring import read_predictions

    assert "scored 6 video(s)" in scored.stdout and len(read_predictions(str(tmp_path / "p"))) == 6

    tuned = affect(["tune", dataset, "--out", str(tmp_path / "tune"), "--num-samples", "1", "--epochs", "1",
                    "--no-progress"], env, timeout=600)  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert "tuned 1 trial(s)" in tuned.stdout and (tmp_path / "tune" / "best_config.yaml").is_file()

    listed = affect_ray_jobs(job_server)
    assert sorted(kind for kind, status in listed if status == "SUCCEEDED") == ["ScoreJob", "TrainJob", "TuneJob"]


def affect_ray_jobs(env: dict[str, str]) -> list[tuple[str, str]]:
    """``(job kind, status)`` of the affect jobs the job server knows, as a separate client sees them."""
    probe = (
        "import json, os; from ray.job_submission import JobSubmissionClient\n"
        "jobs = JobSubmissionClient(os.environ['RAY_ADDRESS']).list_jobs()\n"
        "print(json.dumps([[(j.metadata or {}).get('affect_job', ''), j.status.value] for j in jobs]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    return [tuple(pair) for pair in json.loads(done.stdout.strip().splitlines()[-1]) if pair[0]]


def test_a_failing_job_fails_the_command_with_its_error(job_server: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-dataset")
    done = affect(["train", missing, "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"],
                  job_server, timeout=600)  # fmt: skip
    assert done.returncode == 1
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Ray job" in error[0] and "failed" in error[0] and "no-such-dataset" in error[0], error
    assert not (tmp_path / "run").exists()
    assert ("TrainJob", "FAILED") in affect_ray_jobs(job_server)


def test_a_client_without_the_token_gets_one_clear_error(job_server: dict[str, str], tmp_path: Path) -> None:
    done = affect(["score", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p")],
                  {"RAY_ADDRESS": job_server["RAY_ADDRESS"], "RAY_AUTH_MODE": "disabled"}, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: RAY_ADDRESS=http://127.0.0.1:") and len(done.stderr.splitlines()) == 1
    assert "token authentication" in done.stderr and "RAY_AUTH_MODE=token" in done.stderr, done.stderr
    assert "~/.ray/auth_token" in done.stderr and "RAY_AUTH_TOKEN_PATH" in done.stderr


def test_a_job_server_address_where_nothing_listens_is_one_line(tmp_path: Path) -> None:
    """The job submission client has no timeout of its own; the command checks the address first (the timeout here
    only catches a hang)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = affect(["score", str(tmp_path / "d"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p")],
                  {"RAY_ADDRESS": address}, timeout=120)  # fmt: skip
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: RAY_ADDRESS={address}: no Ray job server answers"), done.stderr
