"""The local services start, work, listen on 127.0.0.1 only, and leave no process behind when stopped."""

from __future__ import annotations

import json
import os
import shlex
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

from affect_services import (
    PrefectServer,
    RayCluster,
    SeaweedS3,
    is_loopback,
    listening_sockets,
    ray_driver_environment,
    read_state,
    recorded_pids_alive,
)
from affect_services.stack import STATE_FILE

pytestmark = pytest.mark.services

REPO_ROOT = Path(__file__).resolve().parents[1]

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

print(smoke(41))
"""


# Submits a job through the job server named by RAY_ADDRESS and prints its final status and its logs.
JOB_CLIENT = """
import json, os, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
job = client.submit_job(entrypoint=sys.argv[1])
deadline = time.monotonic() + 240
while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
    if time.monotonic() > deadline:
        sys.exit(f"job {job} still {status} after 240 s")
    time.sleep(0.5)
print(json.dumps({"status": status.value, "logs": client.get_job_logs(job), "jobs": len(client.list_jobs())}))
"""
# The job's driver joins the cluster it was submitted to.
JOB_ENTRYPOINT = (
    "python -c \"import ray; ray.init(); print('alive nodes', sum(n['Alive'] for n in ray.nodes())); ray.shutdown()\""
)


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


def test_ray_worker_node_can_be_killed_and_nothing_is_left(tmp_path: Path) -> None:
    cluster = RayCluster(tmp_path / "ray", head_cpus=1, worker_nodes=1, worker_cpus=1)
    with cluster:
        head_pids, worker_pids = cluster.node_pids()
        assert head_pids and worker_pids
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
    assert result.stdout.strip().splitlines()[-1] == "42"
    request = urllib.request.Request(
        f"{prefect_server.api_url}/flow_runs/filter",
        data=json.dumps({"flow_runs": {"name": {}}, "limit": 50}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())
    assert any(run["state_type"] == "COMPLETED" for run in runs)
    assert_loopback_only(prefect_server.pids())


def test_stack_up_and_down_leave_nothing_running(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    command = [sys.executable, "-m", "affect_services"]
    up = subprocess.run([*command, "up", str(stack_dir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert up.returncode == 0, up.stderr[-3000:]
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in up.stdout.splitlines() if line)
    expected = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AFFECT_S3_ENDPOINT"}
    expected |= {"PREFECT_API_URL", "RAY_ADDRESS", "AFFECT_RAY_GCS_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"}
    assert expected <= env.keys()
    assert env["AWS_SECRET_ACCESS_KEY"] not in up.stderr
    assert (stack_dir / STATE_FILE).stat().st_mode & 0o077 == 0
    assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    assert env["AFFECT_RAY_GCS_ADDRESS"].startswith("127.0.0.1:")
    scratch_dirs = [Path(path) for path in read_state(stack_dir)["scratch_dirs"]]
    try:
        assert set(read_state(stack_dir)["services"]) == {"s3", "prefect", "ray"}
        with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=10) as response:
            assert json.loads(response.read()) is True
        # A job submitted through the exported RAY_ADDRESS (the head's job server) runs on the stack's cluster.
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        submitted = subprocess.run(
            [sys.executable, "-c", JOB_CLIENT, JOB_ENTRYPOINT],
            env={**client_env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        job = json.loads(submitted.stdout.strip().splitlines()[-1])
        assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
        assert "alive nodes 2" in job["logs"]
        assert job["jobs"] >= 1
        # Every process of the stack, the job server and the processes the job started included.
        pids = recorded_pids_alive(stack_dir)
        assert_loopback_only(pids)
        job_server_port = int(env["RAY_ADDRESS"].rsplit(":", 1)[1])
        assert job_server_port in {port for _pid, _ip, port in listening_sockets(pids)}
    finally:
        pids = recorded_pids_alive(stack_dir)
        down = subprocess.run(
            [*command, "down", str(stack_dir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=200
        )
    assert down.returncode == 0, down.stderr[-3000:]
    assert alive(pids) == []
    assert not (stack_dir / STATE_FILE).exists()
    assert [path for path in scratch_dirs if path.exists()] == []
    mentioning = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(str(stack_dir) in part for part in process.info["cmdline"] or []):
            mentioning.append(process.info["pid"])
    assert alive(mentioning) == []
