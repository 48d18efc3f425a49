"""Ray Data scoring equals the single-process scorer, skips finished videos and never duplicates a frame; local
storage and SeaweedFS S3; plus the S3 settings given to Ray workers keep secrets out of pickles."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from affect_core.artifact import load_bundle
from affect_core.config import RunConfig
from affect_core.data.dataset import dataset_info, iter_videos, read_corpus
from affect_core.experiment import plan_seed_tasks, run_seed
from affect_core.scoring import MANIFEST, finished_videos, part_name, score_videos
from affect_core.storage import resolve
from tests.test_ray_train import affect, make_dataset
from tuning.cluster import ray_storage, shareable_storage_options, worker_env

COLUMNS = ("arousal", "valence", "arousal_var", "valence_var", "time_s")


def train_bundle(dataset: str, run_url: str, storage_options: dict | None) -> str:
    """A one-epoch LSTM-KF arousal model, trained in this process."""
    config = RunConfig()
    config.model.model = "lstm-kf"
    config.train.max_epochs = 1
    task = plan_seed_tasks(config, "arousal", [0])[0]
    corpus = read_corpus(dataset, storage_options=storage_options)
    return run_seed(task, corpus, run_url, storage_options=storage_options).bundle_url


def read_parts(url: str, storage_options: dict | None) -> dict:
    out = resolve(url, storage_options)
    tables = {}
    for video_id in finished_videos(out):
        with out.fs.open(out.join(part_name(video_id)).path, "rb") as handle:
            tables[video_id] = pq.read_table(io.BytesIO(handle.read()))
    return tables


@pytest.mark.services
@pytest.mark.parametrize("store", ["local", "s3"])
def test_ray_scoring_equals_single_process_and_reruns_cleanly(store, ray_cluster, s3_server, tmp_path, request):
    if store == "s3":
        base, options = request.getfixturevalue("s3_url"), s3_server.storage_options()
    else:
        base, options = str(tmp_path / "store"), None
    env = {**ray_cluster.env(), **s3_server.env()}
    dataset = make_dataset(tmp_path / "corpus", f"{base}/dataset", options)
    model = train_bundle(dataset, f"{base}/run", options)
    info = dataset_info(dataset, storage_options=options)
    reference = f"{base}/reference"
    score_videos(
        load_bundle(model, options),
        iter_videos(dataset, storage_options=options),
        reference,
        feature_names=info.feature_names,
        storage_options=options,
        progress=False,
    )

    predictions = f"{base}/predictions"
    done = affect(["score", dataset, "--model", model, "--out", predictions, "--ray", "--no-progress"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = read_parts(reference, options), read_parts(predictions, options)
    assert sorted(got) == sorted(expected) == sorted(v for ids in info.videos.values() for v in ids)
    for video_id, table in expected.items():
        assert got[video_id].column("frame").to_pylist() == list(range(table.num_rows))
        for column in COLUMNS:
            np.testing.assert_allclose(
                got[video_id].column(column).to_numpy(zero_copy_only=False),
                table.column(column).to_numpy(zero_copy_only=False),
                atol=1e-5,
            )

    # An interrupted job: some videos' parts and the manifest are missing. The re-run scores only those.
    out = resolve(predictions, options)
    lost = sorted(got)[::2]
    for name in [part_name(v) for v in lost] + [MANIFEST]:
        out.fs.rm(out.join(name).path)
    again = affect(["score", dataset, "--model", model, "--out", predictions, "--ray", "--no-progress"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(got) - len(lost)} already done" in again.stdout
    rerun = read_parts(predictions, options)
    assert out.exists(MANIFEST)
    assert sorted(rerun) == sorted(got)
    for video_id, table in rerun.items():
        frames = table.column("frame").to_pylist()
        assert frames == list(range(expected[video_id].num_rows)), f"{video_id}: duplicate or missing frames"
    assert s3_server.secret_key not in done.stdout + done.stderr + again.stdout + again.stderr


def test_s3_secrets_travel_as_environment_never_in_options_or_filesystems(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AFFECT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    options = {
        "key": "AKIDPLANTED",
        "secret": "planted-secret-value",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
    }
    env = worker_env(options)
    assert env["AWS_SECRET_ACCESS_KEY"] == "planted-secret-value"
    assert env["AFFECT_S3_ENDPOINT"] == "http://127.0.0.1:9"
    shared = shareable_storage_options(options)
    assert "planted-secret-value" not in repr(shared) and "AKIDPLANTED" not in repr(shared)
    path, filesystem = ray_storage("s3://bucket/run/_ray", options)
    assert path == "bucket/run/_ray"
    assert b"planted-secret-value" not in pickle.dumps(filesystem)
