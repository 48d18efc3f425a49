"""Multi-seed training on a real two-node Ray cluster (127.0.0.1, 1 CPU per node) through RAY_ADDRESS.

The driver is the ``affect`` CLI in a subprocess with the cluster's environment, as a user would run it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from affect_core.data.dataset import ingest
from affect_core.storage import list_dir, resolve
from affect_core.synth import SynthConfig, write_corpus

SEEDS = 4
TRAIN_ARGS = ["--dimension", "arousal", "--model", "lstm-kf", "--seeds", str(SEEDS), "--epochs", "3"]


def make_dataset(root: Path, url: str, storage_options: dict | None = None) -> str:
    """A tiny generated corpus (2 videos per split, 300 frames, 14 features) ingested at ``url``."""
    write_corpus(SynthConfig(videos_per_split=2, frames=300, appearance_dim=6, geometric_dim=8), root, "parquet")
    ingest(str(root), url, layout="parquet", storage_options=storage_options, progress=False)
    return url


def affect(args: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """Run the ``affect`` CLI with ``env`` added to this process's environment."""
    command = [sys.executable, "-m", "affect_cli.main", *args]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def check_run(run_url: str, storage_options: dict | None = None, seeds: int = SEEDS) -> list[str]:
    """Results, summary, model and one checkpoint per seed exist; returns the node of each seed."""
    run = resolve(run_url, storage_options)
    with run.fs.open(run.join("results.parquet").path, "rb") as handle:
        results = pq.read_table(handle).to_pandas()
    assert sorted(results["seed"].unique()) == list(range(seeds))
    assert set(results["split"]) >= {"train", "dev"}
    assert results["ccc"].notna().all()
    assert run.exists("summary.md") and run.exists("model", "bundle.json")
    checkpoints = {name for name, _ in list_dir(run.fs, run.join("checkpoints").path)}
    assert checkpoints == {f"arousal-seed{k}.pt" for k in range(seeds)}
    return results.groupby("seed")["node"].first().tolist()


@pytest.mark.services
@pytest.mark.slow
def test_seeds_run_on_both_nodes_with_s3_storage_and_resume(ray_cluster, s3_server, s3_url, tmp_path):
    """Two seeds train at once, one on each node (one CPU each), dataset and run on S3; an interrupted run resumes
    without training its finished seeds again."""
    env = {**ray_cluster.env(), **s3_server.env()}
    dataset = make_dataset(tmp_path / "corpus", f"{s3_url}/dataset", s3_server.storage_options())
    run_url = f"{s3_url}/run"
    args = ["--dimension", "arousal", "--model", "lstm-kf", "--seeds", "2", "--epochs", "3", "--no-progress"]
    done = affect(["train", dataset, "--out", run_url, *args], env)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = check_run(run_url, s3_server.storage_options(), seeds=2)
    alive = {node["NodeID"] for node in _ray_nodes(env)}
    assert set(nodes) <= alive
    assert len(set(nodes)) == 2, f"both seeds ran on one node: {nodes}"
    assert s3_server.secret_key not in done.stdout + done.stderr

    # An interrupted run (one seed unfinished, no results yet) resumes: finished seeds are not trained again.
    options = s3_server.storage_options()
    run = resolve(run_url, options)
    before = _results(run_url, options)
    run.fs.rm(run.join("results.parquet").path)
    run.fs.rm(run.join("seeds", "arousal-seed1", "rows.json").path)
    again = affect(["train", dataset, "--out", run_url, *args, "--resume"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    check_run(run_url, options, seeds=2)
    after = _results(run_url, options)
    kept = before["seed"] < 1
    assert kept.any() and after[kept]["train_seconds"].tolist() == before[kept]["train_seconds"].tolist()


@pytest.mark.services
@pytest.mark.slow
def test_seeds_finish_when_a_worker_node_is_killed(ray_cluster, tmp_path):
    """Two seeds of six epochs train at once, one on each node; the worker node is killed once both have checkpointed
    an epoch (so its seed dies mid-training) and started again: the run finishes with both seeds."""
    dataset = make_dataset(tmp_path / "corpus", str(tmp_path / "dataset"))
    run_url = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "affect_cli.main",
        "train",
        dataset,
        "--out",
        str(run_url),
        "--dimension",
        "arousal",
        "--model",
        "lstm-kf",
        "--seeds",
        "2",
        "--epochs",
        "6",
        "--max-failures",
        "5",
        "--no-progress",
    ]
    driver = subprocess.Popen(
        command, env={**os.environ, **ray_cluster.env()}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # Two seeds train at once (one per node); kill the worker node once both have checkpointed an epoch.
        deadline = time.monotonic() + 240
        while len(list((run_url / "checkpoints").glob("*.pt"))) < 2:
            assert driver.poll() is None, driver.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the seeds never started"
            time.sleep(0.2)
        ray_cluster.kill_worker(0)
        ray_cluster.restart_worker(0)
        output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
        if not any(ray_cluster.node_pids()[1:]):
            ray_cluster.restart_worker(0)
    assert driver.returncode == 0, output[-3000:]
    check_run(str(run_url), seeds=2)


@pytest.mark.services
@pytest.mark.slow
def test_seed_stacks_on_ray_workers_give_the_single_process_results(ray_cluster, tmp_path):
    """--seeds-per-worker 2: four seeds in two Ray Train workers (one stack each, on both nodes); the rows equal
    those of the same run in one process."""
    dataset = make_dataset(tmp_path / "corpus", str(tmp_path / "dataset"))
    args = [*TRAIN_ARGS, "--seeds-per-worker", "2", "--no-progress"]
    on_ray = affect(["train", dataset, "--out", str(tmp_path / "ray"), *args], ray_cluster.env())
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    local = affect(["train", dataset, "--out", str(tmp_path / "local"), *args, "--no-ray"], {})
    assert local.returncode == 0, local.stderr[-3000:]
    got, expected = _results(str(tmp_path / "ray"), None), _results(str(tmp_path / "local"), None)
    assert got["seed"].tolist() == expected["seed"].tolist() and sorted(set(got["seed"])) == list(range(SEEDS))
    assert (got["ccc"] - expected["ccc"]).abs().max() < 1e-4
    nodes = got.groupby("seed")["node"].first().tolist()
    assert nodes[0] == nodes[1] and nodes[2] == nodes[3]  # a stack is one worker
    assert nodes[0] != nodes[2], f"both stacks ran on one node: {nodes}"


def _results(run_url: str, storage_options: dict | None):
    run = resolve(run_url, storage_options)
    with run.fs.open(run.join("results.parquet").path, "rb") as handle:
        return pq.read_table(handle).to_pandas().sort_values(["seed", "split"]).reset_index(drop=True)


def _ray_nodes(env: dict[str, str]) -> list[dict]:
    """The cluster's nodes as a separate driver sees them (keeps Ray out of the test process)."""
    import json

    probe = "import json, ray; ray.init(logging_level='ERROR'); print(json.dumps(ray.nodes())); ray.shutdown()"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def listening_addresses(root: psutil.Process) -> set[tuple[str, int, str]]:
    """``(address, port, process name)`` of every listening TCP socket of ``root`` and its descendants."""
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add((connection.laddr.ip, connection.laddr.port, process.name()))
        except psutil.Error:
            continue  # a worker that ended between the listing and the look
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def run_watching_sockets(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str, set]:
    """Run the ``affect`` CLI with ``env`` (its whole environment), looking at every listening socket of it and its
    descendants every 0.5 s until it ends; returns its exit code, its output and ``(address, port, process name)`` of
    every socket seen."""
    seen: set[tuple[str, int, str]] = set()
    with tempfile.TemporaryFile("w+") as log:  # not a pipe: nobody reads while it runs, and a full pipe would block it
        driver = subprocess.Popen(
            [sys.executable, "-m", "affect_cli.main", *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            root = psutil.Process(driver.pid)
            deadline = time.monotonic() + timeout
            while driver.poll() is None:
                seen |= listening_addresses(root)
                assert time.monotonic() < deadline, f"affect {args[0]} still running after {timeout} s"
                time.sleep(0.5)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        log.seek(0)
        output = log.read()
    return driver.returncode, output, seen


def assert_embedded_ray_on_loopback_only(seen: set[tuple[str, int, str]]) -> None:
    """Ray ran in the watched process (its GCS and raylet were among the listeners) and every socket seen listened
    on 127.0.0.1."""
    names = {name for _, _, name in seen}
    assert {"gcs_server", "raylet"} <= names, seen  # Ray ran, and its servers were looked at
    assert [s for s in seen if not is_loopback(s[0])] == []


@pytest.mark.slow
def test_two_data_parallel_workers_train_the_model_of_one(tmp_path):
    """`affect train --ray --workers 2`: one seed trained by two Ray Train workers, each reading its part of every
    split of the pinned dataset version and summing gradients through a torch process group, gives the results of
    `--workers 1` (to float summation order).

    Both runs start Ray in their process (no RAY_ADDRESS): every socket that Ray (GCS, raylet, agents, workers) or the
    process group listens on while they run is on 127.0.0.1 (`affect tune` is watched the same way in
    tests/test_ray_tune.py)."""
    dataset = make_dataset(tmp_path / "corpus", str(tmp_path / "dataset"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    args = ["--dimension", "arousal", "--model", "lstm-kf", "--seeds", "1", "--epochs", "3", "--window-frames", "100"]
    runs = {}
    for workers in (1, 2):
        out = str(tmp_path / f"workers{workers}")
        command = ["train", dataset, "--out", out, *args, "--ray", "--workers", str(workers), "--no-progress"]
        returncode, output, seen = run_watching_sockets(command, env)
        assert returncode == 0, output[-3000:]
        assert_embedded_ray_on_loopback_only(seen)
        assert "PlacementGroupCleaner" not in output and "Failed to query" not in output, output[-3000:]
        runs[workers] = _results(out, None)
    one, two = runs[1], runs[2]
    assert one[["seed", "split", "epochs"]].equals(two[["seed", "split", "epochs"]])
    assert (one["ccc"] - two["ccc"]).abs().max() < 2e-4, (one["ccc"].tolist(), two["ccc"].tolist())
    assert (one["mu_frames"] - two["mu_frames"]).abs().max() < 1e-2


@pytest.mark.services
@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["train", "{dataset}", "--out", "{out}", "--ray", "--cpus-per-seed", "4"], "one seed's worker"),
        (["train", "{dataset}", "--out", "{out}", "--ray", "--gpus-per-seed", "0.5"], "one seed's worker"),
        (["score", "{dataset}", "--model", "{out}/model", "--out", "{out}/p", "--ray", "--gpus-per-actor", "0.25"],
         "one scoring actor"),
    ],
)  # fmt: skip
def test_a_request_no_node_can_hold_fails_after_its_timeout(ray_cluster, tmp_path, command, what):
    """On the fixed two-node cluster (1 CPU, no GPU per node) a seed or actor asking for more than any node has is
    an error after --resource-timeout, naming the request and the largest node, not a run that waits forever."""
    dataset = make_dataset(tmp_path / "corpus", str(tmp_path / "dataset"))
    args = [part.format(dataset=dataset, out=tmp_path / "run") for part in command]
    done = affect([*args, "--resource-timeout", "1", "--no-progress"], ray_cluster.env(), timeout=180)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"no node can hold {what}" in errors[0], done.stderr[-2000:]
    asked = args[-1] + (" CPU" if "cpus" in args[-2] else " GPU")
    assert asked in errors[0] and "the largest node has" in errors[0] and "within 1 s" in errors[0]
    assert not (tmp_path / "run" / "results.parquet").exists() and not (tmp_path / "run" / "p").exists()


def test_trainers_on_the_in_process_ray_run_without_the_placement_group_cleaner():
    """Ray Train's placement-group cleaner asks Ray's state API (served by the dashboard) every few seconds whether
    the run's controller lives; on the Ray a command starts in its own process there is no dashboard, so each query
    failed with a warning in the command's output. The drivers turn the cleaner off there, and only there."""
    import ray.train
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from tuning import cluster
    from tuning.trainer import TrainerSettings

    def loop(config):
        pass

    def has_cleaner(trainer) -> bool:
        return any(isinstance(c, PlacementGroupCleanerCallback) for c in trainer._create_default_callbacks())

    run = {"scaling_config": ray.train.ScalingConfig(num_workers=1), "run_config": ray.train.RunConfig(name="r")}
    assert has_cleaner(cluster.one_worker_trainer(loop, **run))
    assert not has_cleaner(cluster.one_worker_trainer(loop, watch_controller=False, **run))
    for in_process in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cluster, "_STARTED_IN_PROCESS", in_process)
            settings = TrainerSettings(resources_per_worker={"CPU": 1.0}, storage_path="/tmp/unused")
        assert settings.watch_controller is not in_process
