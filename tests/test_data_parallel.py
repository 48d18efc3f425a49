"""Data-parallel training: two workers, each holding half of the videos, train the model one process holding every
video trains (the same windows, the gradients summed, the dev metrics gathered), up to float summation order.

The workers are two processes joined by torch.distributed's gloo backend on 127.0.0.1 (what Ray Train sets up for
`affect train --workers 2` on CPUs)."""

from __future__ import annotations

import copy
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from affect_core.config import FeatureConfig, ModelConfig, RunConfig, TrainConfig
from affect_core.features import feature_statistics, fit_feature_transform
from affect_core.parallel import Workers
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import train_seeds

TOL = 2e-4
SEEDS = [0, 1]


def make_corpus():
    return generate_corpus(SynthConfig(videos_per_split=3, frames=240, appearance_dim=5, geometric_dim=4, seed=11))


def make_config(case: str) -> RunConfig:
    if case == "windows":
        return RunConfig(
            model=ModelConfig(model="lstm-kf", align="adaptive", window=15),
            features=FeatureConfig(pca_share=0.95),
            train=TrainConfig(max_epochs=3, patience=5, window_frames=60, batch_size=3),
        )
    return RunConfig(  # whole sequences, manual alignment found on the train split
        model=ModelConfig(model="lstm-ekf", align="manual"),
        train=TrainConfig(max_epochs=2, patience=5, window_frames=None),
    )


def summary(results) -> dict:
    return {
        "history": [[(r.epoch, r.train_loss, r.dev_ccc) for r in result.history] for result in results],
        "state": [{k: v.detach().clone() for k, v in result.model.state_dict().items()} for result in results],
        "dev": [result.metrics["dev"] for result in results],
        "shift": results[0].config.model.manual_shift,
    }


def run_worker(rank: int, world: int, port: int, case: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        corpus = make_corpus()
        # Uneven shards on purpose: rank 0 holds two train videos and one dev video, rank 1 the rest.
        train, dev = corpus.split("train"), corpus.split("dev")
        mine = (lambda vs: vs[:2]) if rank == 0 else (lambda vs: vs[2:])
        mine_dev = (lambda vs: vs[:1]) if rank == 0 else (lambda vs: vs[1:])
        results = train_seeds(mine(train), mine_dev(dev), make_config(case), SEEDS, progress=False, workers=Workers())
        if rank == 0:
            with open(out, "wb") as handle:
                pickle.dump(summary(results), handle)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["windows", "whole"])
def test_two_workers_train_the_model_of_one(case, tmp_path):
    torch.set_num_threads(1)
    corpus = make_corpus()
    alone = summary(train_seeds(corpus.split("train"), corpus.split("dev"), make_config(case), SEEDS, progress=False))
    out = str(tmp_path / "rank0.pkl")
    mp.start_processes(run_worker, args=(2, free_port(), case, out), nprocs=2, join=True, start_method="spawn")
    with open(out, "rb") as handle:
        parallel = pickle.load(handle)
    assert parallel["shift"] == alone["shift"]
    for got, expected in zip(parallel["history"], alone["history"], strict=True):
        assert [r[0] for r in got] == [r[0] for r in expected]
        for a, b in zip(got, expected, strict=True):
            assert a[1] == pytest.approx(b[1], abs=TOL) and a[2] == pytest.approx(b[2], abs=TOL)
    for got, expected in zip(parallel["state"], alone["state"], strict=True):
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=TOL, rtol=1e-3, msg=key)
    for got, expected in zip(parallel["dev"], alone["dev"], strict=True):
        assert got["arousal"]["ccc"] == pytest.approx(expected["arousal"]["ccc"], abs=TOL)


def test_feature_statistics_of_shards_add_up_to_the_whole():
    """The transform fitted from summed shard statistics is the one fitted on all frames; PCA equals numpy's SVD of
    the standardised frames up to each component's sign."""
    rng = np.random.default_rng(3)
    videos = [rng.normal(size=(n, 6)) @ rng.normal(size=(6, 6)) for n in (50, 80, 30)]
    videos[1][5:9] = np.nan
    config = FeatureConfig(pca_share=0.9)
    whole = fit_feature_transform(videos, config)
    merged = feature_statistics(videos[:1]).merged(feature_statistics(videos[1:]))
    from affect_core.features import transform_from_statistics

    parts = transform_from_statistics(merged, config)
    np.testing.assert_allclose(parts.mean, whole.mean, atol=1e-12)
    np.testing.assert_allclose(parts.scale, whole.scale, atol=1e-12)
    np.testing.assert_allclose(parts.components, whole.components, atol=1e-10)
    frames = np.concatenate(videos)
    frames = frames[np.isfinite(frames).all(1)]
    z = (frames - frames.mean(0)) / frames.std(0)
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    keep = whole.components.shape[1]
    assert keep == int(np.searchsorted(np.cumsum(singular**2) / np.sum(singular**2), 0.9 - 1e-12) + 1)
    np.testing.assert_allclose(np.abs(whole.components), np.abs(vt[:keep].T), atol=1e-8)
    assert copy.deepcopy(whole).output_dim == keep
