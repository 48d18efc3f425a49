"""The local services start, work, listen on 127.0.0.1 only, and leave no process behind when stopped.

The whole stack as `make stack-up` / `make stack-down` run it (the three services together, a job through the Ray job
server, the state and env files) is checked in tests/test_infra.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from corpus_checks import make_source

from affect_services import (
    PrefectServer,
    RayCluster,
    SeaweedS3,
    is_loopback,
    listening_sockets,
    ray_driver_environment,
)

pytestmark = pytest.mark.services

RAY_DRIVER = """
import json
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()
nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])

@ray.remote(num_cpus=1)
def node_of_task():
    return ray.get_runtime_context().get_node_id()

pinned = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes]
refs = [node_of_task.options(scheduling_strategy=strategy).remote() for strategy in pinned]
print(json.dumps({"nodes": nodes, "ran_on": ray.get(refs)}))
"""

PREFECT_FLOW = """
from prefect import flow, task

@task
def add_one(x: int) -> int:
    return x + 1

@flow(name="services-smoke")
def smoke(x: int) -> int:
    return add_one(x)

state = smoke(41, return_state=True)
print(state.state_details.flow_run_id)
print(state.result())
"""


def alive(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that belong to running (non-zombie) processes."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.Error:
            continue
    return running


def assert_loopback_only(pids: list[int]) -> None:
    sockets = listening_sockets(pids)
    assert sockets, f"no listening sockets found for pids {pids}"
    outside = [entry for entry in sockets if not is_loopback(entry[1])]
    assert outside == [], f"listening beyond loopback (pid, ip, port): {outside}"


def write_and_read_parquet(server: SeaweedS3, prefix: str) -> None:
    """A Parquet file written through s3fs reads back through pyarrow's S3 filesystem, and the other way
    round."""
    table = pa.table({"video_id": ["train_1", "train_1"], "frame": pa.array([0, 1], pa.int32())})
    fs = s3fs.S3FileSystem(**server.storage_options())
    with fs.open(f"{prefix}/via-s3fs.parquet", "wb") as handle:
        pq.write_table(table, handle)
    arrow_fs = server.pyarrow_filesystem()
    assert pq.read_table(f"{prefix}/via-s3fs.parquet", filesystem=arrow_fs).equals(table)
    pq.write_table(table, f"{prefix}/via-pyarrow.parquet", filesystem=arrow_fs)
    assert pq.read_table(f"{prefix}/via-pyarrow.parquet", filesystem=fs).equals(table)


def test_s3_fixture_serves_parquet_on_loopback(s3_server: SeaweedS3, s3_url: str) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    write_and_read_parquet(s3_server, s3_url.removeprefix("s3://"))
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    names = sorted(path.rsplit("/", 1)[-1] for path in fs.ls(s3_url))
    assert names == ["via-pyarrow.parquet", "via-s3fs.parquet"]
    assert_loopback_only(s3_server.pids())


def test_seaweed_restarts_on_same_data_and_stops_cleanly(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3")
    with server:
        server.create_bucket("restart-test")
        write_and_read_parquet(server, "restart-test/before")
        endpoint, first_pids = server.endpoint_url, server.pids()
        server.stop()
        assert alive(first_pids) == []
        assert not server.running
        server.start()
        assert server.endpoint_url == endpoint
        fs = s3fs.S3FileSystem(**server.storage_options())
        assert pq.read_table("restart-test/before/via-s3fs.parquet", filesystem=fs).num_rows == 2
        second_pids = server.pids()
    assert alive(first_pids + second_pids) == []
    assert server.secret_key not in server.log_path.read_text(errors="replace")
    identities = tmp_path / "s3" / "s3-identities.json"
    assert identities.stat().st_mode & 0o077 == 0


def test_seaweed_rejects_wrong_credentials(s3_server: SeaweedS3) -> None:
    impostor = SeaweedS3(s3_server.data_dir, access_key=s3_server.access_key, secret_key="not-the-secret")
    impostor._ports = dict(s3_server._ports)  # same endpoint, wrong secret; never started
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        impostor.client().list_buckets()


def test_ray_cluster_runs_a_task_on_each_node(ray_cluster: RayCluster) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RAY_DRIVER],
        env={**os.environ, **ray_cluster.env()},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["nodes"]) == 2
    assert report["ran_on"] == report["nodes"]
    assert ray_cluster.address.startswith("127.0.0.1:")
    assert_loopback_only(ray_cluster.pids())
    for pid in ray_cluster.node_pids()[0][:1]:
        assert psutil.Process(pid).environ().get("RAY_AUTH_MODE") == "token"


def test_ray_driver_in_process_after_ray_was_imported(ray_cluster: RayCluster) -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("another test left a Ray session open in this process")
    with ray_driver_environment(ray_cluster.env()):
        ray.init(address=ray_cluster.address, log_to_driver=False)
        try:
            assert sum(node["Alive"] for node in ray.nodes()) == 2
            assert ray.get(ray.put(41)) + 1 == 42
            assert_loopback_only([os.getpid()])
        finally:
            ray.shutdown()
    assert "RAY_ADDRESS" not in os.environ or os.environ["RAY_ADDRESS"] != ray_cluster.address


def affect_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The ``affect`` CLI with ``env`` over this environment less every Ray setting (address, auth, token)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AFFECT_RAY"))}
    command = [sys.executable, "-m", "affect_cli.main", *args]
    return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


def test_ray_connection_failures_are_one_line_each_naming_what_to_fix(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """Against the pinned Ray with token authentication on, a driver (`affect ingest --parallel`, which joins the
    cluster at RAY_ADDRESS): nothing listening at the address, a wrong token, no token, and no RAY_AUTH_MODE each end
    in one line (no 'storage failed', no traceback); with RAY_AUTH_MODE=token and the token where Ray's docs put it
    (~/.ray/auth_token, as `ray start --head` writes it) the same command works. The timeouts only catch a hang
    (Ray alone retried an address where nothing listens for over 5 minutes)."""
    source = make_source(tmp_path / "src")
    ingest = ["ingest", str(source), str(tmp_path / "ds"), "--layout", "csv", "--parallel", "--no-progress"]
    joined = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    line = one_error_line(affect_cli(ingest, {**joined, "RAY_ADDRESS": nowhere}, timeout=120))
    assert line.startswith(f"error: RAY_ADDRESS={nowhere}: no Ray cluster answers"), line

    empty_home = tmp_path / "home-without-token"
    empty_home.mkdir()
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    refused = {
        "wrong token": {**ray_cluster.env(), "RAY_AUTH_TOKEN_PATH": str(wrong)},
        "no token": {**ray_cluster.env(), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing"), "HOME": str(empty_home)},
        "no auth mode": {**joined, "RAY_ADDRESS": ray_cluster.address, "HOME": str(empty_home)},
    }
    for case, env in refused.items():
        line = one_error_line(affect_cli(ingest, env, timeout=120))
        assert line.startswith(f"error: RAY_ADDRESS={ray_cluster.address}: "), (case, line)
        assert "RAY_AUTH_MODE=token" in line and "~/.ray/auth_token" in line, (case, line)
        assert "storage failed" not in line, (case, line)
    assert not (tmp_path / "ds").exists()

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    shutil.copy(ray_cluster.token_path, home / ".ray" / "auth_token")
    env = {**joined, "RAY_ADDRESS": ray_cluster.address, "RAY_AUTH_MODE": "token", "HOME": str(home)}
    done = affect_cli(ingest, env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ds").is_dir()


def test_ray_worker_node_can_be_killed_and_nothing_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", raising=False)  # the cluster's own setting
    cluster = RayCluster(tmp_path / "ray", head_cpus=1, worker_nodes=1, worker_cpus=1)
    with cluster:
        head_pids, worker_pids = cluster.node_pids()
        assert head_pids and worker_pids
        # Its nodes stop without Ray's 30 s drain after SIGTERM.
        assert psutil.Process(head_pids[0]).environ().get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S") == "0"
        cluster.kill_worker(0)
        assert alive(worker_pids) == []
        assert alive(head_pids[:1]) == head_pids[:1]
        all_pids = cluster.pids()
    assert alive(head_pids + worker_pids + all_pids) == []
    token = cluster.token_path.read_text().strip()
    logs = [path for path in (tmp_path / "ray").rglob("*") if path.is_file() and path != cluster.token_path]
    leaked = [str(path) for path in logs if token.encode() in path.read_bytes()]
    assert leaked == []


def test_prefect_server_runs_a_flow(prefect_server: PrefectServer, tmp_path: Path) -> None:
    client_home = tmp_path / "prefect-client"
    env = {**os.environ, **prefect_server.env(), "PREFECT_HOME": str(client_home)}
    result = subprocess.run([sys.executable, "-c", PREFECT_FLOW], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, flow_run_id, value = result.stdout.strip().splitlines()
    assert value == "42"
    # The server may hold other runs: this test's own run, by its id, is the one that must have completed there.
    with urllib.request.urlopen(f"{prefect_server.api_url}/flow_runs/{flow_run_id}", timeout=30) as response:
        run = json.loads(response.read())
    assert run["id"] == flow_run_id and run["state_type"] == "COMPLETED", run.get("state")
    assert run["parameters"] == {"x": 41}
    assert_loopback_only(prefect_server.pids())
