"""RAY_ADDRESS as a Ray job server (http://127.0.0.1:<port>): `affect train`, `affect score` and `affect tune` submit
their Ray work as Ray jobs to a local head whose job server listens on 127.0.0.1, stream the job's logs, and fail with
the job's own error."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.test_ray_train import affect, is_loopback, listening_addresses, make_dataset

# `make test` runs this module in a pytest session of its own: after the rest of the suite in one process, the job
# drivers here have failed to join the head started below ("Failed to connect to Ray cluster"), while the module
# alone, or after any single other module tried, passes.
pytestmark = [pytest.mark.services, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]

# A head node with its dashboard (and so its job server) on 127.0.0.1, kept up until stdin closes.
HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]),
         _node_ip_address="127.0.0.1", logging_level="ERROR")
print("ready", flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def job_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment that reaches a local Ray head's job server: ``RAY_ADDRESS=http://127.0.0.1:<port>`` and the
    cluster's token (token authentication on, as on the KubeRay cluster). The job drivers find the project on
    PYTHONPATH and ``python`` on PATH, as the image's do on a KubeRay head."""
    port = free_port()
    directory = tmp_path_factory.mktemp("ray-head")
    token = directory / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        {
            **auth,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
    )
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD, str(port)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=directory,
    )
    try:
        assert head.stdout.readline().strip() == "ready", head.stdout.read()[-3000:]
        address = f"http://127.0.0.1:{port}"
        import psutil

        root = psutil.Process(head.pid)
        deadline = time.monotonic() + 120
        # The job server is the head's own socket on the port (not another program that took the port meanwhile).
        while port not in {p for _, p, _ in listening_addresses(root)}:
            assert head.poll() is None and time.monotonic() < deadline, (
                f"the head's job server never listened on {port}"
            )
            time.sleep(1)
        sockets = listening_addresses(root)
        assert all(is_loopback(ip) for ip, _, _ in sockets), sockets
        yield {"RAY_ADDRESS": address, **auth}
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever Ray left of this head
        except ProcessLookupError:
            pass


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
