"""Shared fixtures: real local services (SeaweedFS S3, a two-node Ray cluster, a Prefect server).

Each service is session-scoped, started only when a test first asks for it and stopped at the end of the
session; everything binds to 127.0.0.1 and keeps its data under pytest's temporary directory. Tests that use
them are marked ``@pytest.mark.services``. A test that stops a shared service (to simulate an outage) must
start it again before it returns, in a ``finally``.

``ingested_source`` is the data tests' re-ingest set-up: a small generated csv source ingested once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from corpus_checks import IngestedSource, make_source

from affect_services import PrefectServer, RayCluster, SeaweedS3

S3_TEST_BUCKET = "affect-test"

# A Ray node stopped with SIGTERM first drains for up to 30 s while any actor is alive, such as the autoscaling
# coordinator that Ray Train leaves behind: time for a Serve proxy to quiesce on Kubernetes, which nothing here runs.
# 0 turns the wait off; the nodes then stop at once, and each stop still checks that no process of theirs is left.
# RayCluster's nodes (the session's cluster, the local stack's) set it themselves; this covers every other Ray a test
# starts. Set before any test starts a node or imports ray.
os.environ.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")


@pytest.fixture
def ingested_source(tmp_path: Path) -> IngestedSource:
    """A small csv source at ``tmp_path/src`` (2 videos per split), ingested once into ``tmp_path/ds``."""
    from affect_core.data.dataset import ingest

    root, url = make_source(tmp_path / "src"), str(tmp_path / "ds")
    return IngestedSource(root, url, ingest(str(root), url, layout="csv", progress=False))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server with the bucket ``affect-test``; use ``.storage_options()`` or ``.env()`` to
    reach it."""
    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        server.create_bucket(S3_TEST_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: SeaweedS3) -> str:
    """A fresh, empty prefix ``s3://affect-test/<uuid>`` on :func:`s3_server`."""
    return f"s3://{S3_TEST_BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3) -> Iterator[RayCluster]:
    """A Ray cluster of two nodes with one CPU each (head + one worker), token authentication on, whose nodes have
    :func:`s3_server`'s endpoint and keys in their environment (work never carries keys to them).

    A driver needs ``ray_cluster.env()`` in its environment before it imports ray (a subprocess is simplest);
    an in-process driver calls ``affect_services.prepare_ray_driver(ray_cluster.env())`` before
    ``ray.init()``."""
    cluster = RayCluster(
        tmp_path_factory.mktemp("ray"), head_cpus=1, worker_nodes=1, worker_cpus=1, node_env=s3_server.env()
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server with its own SQLite database; clients use ``prefect_server.env()``."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True, scope="module")
def no_in_process_ray_left_behind() -> Iterator[None]:
    """A module whose tests start Ray inside the pytest process (flows, jobs run in-process) stops it when the module
    ends: its actors would otherwise go on writing to this process's output, into other tests' captured stderr."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
