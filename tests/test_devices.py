"""Device discipline without a GPU: a training step and a scoring step run with the model on torch's "meta" device.

Meta tensors have shapes but no data, so every hidden host synchronisation (``.item()``, ``bool(tensor)``,
``float(tensor)``, a copy to the host) raises; and a function mode checks that every torch call's tensors share one
device (a tensor left on the CPU while the model sits on a GPU is caught here, not on a user's GPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.errors import AffectError
from affect_core.inference import padded_predictions, to_model_device
from affect_core.model import AffectModel, host_finite_rows
from affect_core.training import Step, build_optimizer, pad_batch, to_device, training_step

META = torch.device("meta")


def tensors_in(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


class OneDevice(TorchFunctionMode):
    """Fails a torch call whose tensors sit on more than one device (0-dim CPU tensors excepted, as torch allows)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tensors_in((args, kwargs)) if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_the_checks_catch_what_they_are_for():
    a = torch.ones(3, device=META)
    with pytest.raises(RuntimeError):
        bool(a.sum() > 0)  # a host synchronisation
    with pytest.raises(AssertionError, match="mixes devices"), OneDevice():
        torch.mm(torch.ones(2, 2, device=META), torch.ones(2, 2))  # torch itself lets this one through


def corpus_items(rng: np.random.Generator, lengths=(60, 45, 60)) -> list[tuple[np.ndarray, np.ndarray]]:
    items = []
    for n in lengths:
        x = rng.normal(size=(n, 5)).astype(np.float32)
        x[10:14] = np.nan  # frames without a face
        labels = np.tanh(rng.normal(size=(n, 1))).astype(np.float32)
        labels[:3] = np.nan  # unlabelled frames
        items.append((x, labels))
    return items


@pytest.mark.parametrize(
    ("model", "method", "windows"),
    [
        ("lstm-kf", "auto", False),
        ("lstm-kf", "auto", True),
        ("lstm-ekf", "reference", False),
        ("baseline", "auto", False),
    ],
)
def test_a_training_step_keeps_to_the_model_device_and_never_waits_for_it(model, method, windows):
    config = RunConfig(
        model=ModelConfig(model=model, align="adaptive", input_dim=5, window=10, filter_method=method),
        train=TrainConfig(batch_size=3),
    )
    net = AffectModel(config.model, seeds=[0, 1]).to(META)
    optimizer = build_optimizer(net, config)
    batch = to_device(pad_batch(corpus_items(np.random.default_rng(0))), META)
    if windows:  # per-seed windows: one input per seed, (S, B, T, d)
        x = torch.stack([batch.x, batch.x])
        observed = None if batch.observed is None else torch.stack([batch.observed, batch.observed])
        step = Step(x, observed, [batch.labels] * 2, [batch.x.shape[1]] * 2)
    else:
        step = Step(batch.x, batch.observed, [batch.labels] * 2, [batch.x.shape[1]] * 2)
    assert step.observed is not None and step.observed.device == META
    with OneDevice():
        losses = training_step(net, optimizer, step, [0, 1], fps=25.0, train=config.train)
    assert losses.device == META and losses.shape == (2,)
    assert all(p.device == META for p in net.parameters())


@pytest.mark.parametrize("model", ["lstm-kf", "baseline"])
def test_a_scoring_step_keeps_to_the_model_device_and_never_waits_for_it(model):
    net = AffectModel(ModelConfig(model=model, align="adaptive", input_dim=5, window=10, dimension="joint"))
    net = net.to(META)
    items = corpus_items(np.random.default_rng(1), lengths=(50, 80, 80))
    lengths = [len(x) for x, _ in items]
    padded = np.zeros((3, 80, 5), np.float32)
    for b, (x, _) in enumerate(items):
        padded[b, : len(x)] = x
    observed = host_finite_rows(padded)
    like = net.frontend.head_bias
    with OneDevice():
        x = to_model_device(torch.from_numpy(np.nan_to_num(padded)), like)
        mask = to_model_device(torch.from_numpy(observed), like)
        out = padded_predictions(net, x, mask, lengths)
    for (levels, variances), n in zip(out[0], lengths, strict=True):
        assert levels.device == META and levels.shape == (n, 2)
        assert (variances is None) == (model == "baseline")


# ------------------------------------------------------------------------- --device on every branch of a job
# Each branch of train, tune and score is run up to where its model is placed, with that step replaced by a probe
# that records the device it was given; "meta" (a device no machine defaults to) shows the request got there.
CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where none is visible")


class Reached(Exception):
    """Raised by a probe once it has recorded where the model would go."""


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from affect_core.synth import SynthConfig, write_corpus
    from flows.jobs import IngestJob, run_ingest

    root = tmp_path_factory.mktemp("devices")
    tiny = SynthConfig(videos_per_split=1, frames=120, appearance_dim=4, geometric_dim=4)
    write_corpus(tiny, root / "src", "avec2016")
    run_ingest(IngestJob(source=str(root / "src"), dataset_url=str(root / "data"), parallel=False, progress=False))
    return str(root / "data")


@pytest.fixture
def bundle_probe(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model bundle load records its device, then stops the job."""
    from affect_core import artifact

    seen: list[str] = []

    def load_bundle(url: str, storage_options: object = None, device: str = "cpu") -> None:
        seen.append(str(device))
        raise Reached

    monkeypatch.setattr(artifact, "load_bundle", load_bundle)
    return seen


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The runner's Ray connection and capacity wait, answered without Ray: a cluster of ``gpus`` GPUs."""
    from tuning import cluster

    offered = {"gpus": 0.0}

    def ensure_ray(**_: object) -> cluster.ClusterInfo:
        return cluster.ClusterInfo("fake", 1, 4.0, offered["gpus"], False)

    monkeypatch.setattr(cluster, "ensure_ray", ensure_ray)
    monkeypatch.setattr(cluster, "wait_for_capacity", lambda *a, **k: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return offered


def test_scoring_a_dataset_in_this_process_puts_the_model_on_the_device(tiny_dataset, bundle_probe, tmp_path):
    from flows.jobs import ScoreJob, run_score

    job = ScoreJob(tiny_dataset, str(tmp_path / "m"), str(tmp_path / "p"), ray=False, device="meta", progress=False)
    with pytest.raises(Reached):
        run_score(job)
    assert bundle_probe == ["meta"]


def test_scoring_a_folder_of_videos_puts_the_model_on_the_device(bundle_probe, tmp_path):
    from flows.jobs import ScoreJob, run_score

    (tmp_path / "root" / "videos").mkdir(parents=True)
    job = ScoreJob(str(tmp_path / "root"), str(tmp_path / "m"), str(tmp_path / "p"), ray=False, device="meta")
    with pytest.raises(Reached):
        run_score(job)
    assert bundle_probe == ["meta"]  # not only the feature extraction: the model too


@pytest.mark.parametrize(("device", "gpu", "expected"), [("meta", False, "meta"), ("auto", False, "cpu")])
def test_a_ray_data_scoring_actor_puts_the_model_on_the_device(bundle_probe, monkeypatch, device, gpu, expected):
    from affect_core.data import dataset
    from tuning.score import VideoScorer

    monkeypatch.setattr(dataset, "DatasetReader", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Reached):
        VideoScorer(
            data_url="d", model_url="m", out_url="memory://p", feature_set=None, version="0",
            storage_options=None, target_file_bytes=1, threads=torch.get_num_threads(), use_gpu=gpu, device=device,
        )  # fmt: skip
    assert bundle_probe == [expected]


def test_the_ray_drivers_hand_the_device_on(tiny_dataset, fake_cluster, monkeypatch, tmp_path):
    """train, tune and score on Ray pass --device to the code that starts their workers and actors."""
    from flows.jobs import ScoreJob, TrainJob, TuneJob, run_score, run_train, run_tune
    from tuning import score, train_seeds, tune

    seen: dict[str, object] = {}

    def probe(name: str):
        def record(*args: object, **kwargs: object) -> None:
            seen[name] = kwargs["device"]
            raise Reached

        return record

    monkeypatch.setattr(train_seeds, "train_seeds", probe("train"))
    monkeypatch.setattr(tune, "run_tune", probe("tune"))
    monkeypatch.setattr(score, "score_dataset", probe("score"))
    out = str(tmp_path / "out")
    for run, job in [
        (run_train, TrainJob(tiny_dataset, out, ray=True, device="meta")),
        (run_tune, TuneJob(tiny_dataset, out, device="meta")),
        (run_score, ScoreJob(tiny_dataset, str(tmp_path / "m"), out, ray=True, device="meta")),
    ]:
        with pytest.raises(Reached):
            run(job)
    assert seen == {"train": "meta", "tune": "meta", "score": "meta"}


@pytest.fixture
def ray_train_worker(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A Ray Train worker's surroundings without Ray: rank 0 of 1, no checkpoint, Ray Train assigning "meta"; the
    corpus is not read and training records its device and stops."""
    import ray.train
    import ray.train.torch

    from affect_core import experiment
    from affect_core.data import dataset
    from tuning import cluster

    seen: dict[str, object] = {}

    class Context:
        def get_world_rank(self) -> int:
            return 0

        def get_world_size(self) -> int:
            return 1

    def train(*args: object, device: object = None, **kwargs: object) -> None:
        seen["device"] = device
        raise Reached

    monkeypatch.setattr(ray.train, "get_context", Context)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: META)
    monkeypatch.setattr(dataset, "read_corpus", lambda *a, **k: None)
    monkeypatch.setattr(experiment, "run_seeds", train)
    monkeypatch.setattr(experiment, "run_seed", train)
    monkeypatch.setattr(cluster, "current_node", lambda: "node")
    monkeypatch.setattr(cluster, "worker_placement_group", lambda: {})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    return seen


def seed_loop(device: str) -> dict[str, object]:
    config = RunConfig().to_dict()
    return {"task": [{"name": "arousal", "seed": 0, "config": config}], "dataset_url": "d", "version": "0",
            "run_url": "r", "feature_set": None, "resume": False, "storage_options": {}, "threads": 1,
            "device": device, "use_gpu": False}  # fmt: skip


def trial_loop(device: str) -> dict[str, object]:
    return {"config": RunConfig().to_dict(), "trial_id": "t", "dataset_url": "d", "out_url": "o",
            "feature_set": None, "dimension": "arousal", "storage_options": {}, "device": device}  # fmt: skip


@pytest.mark.parametrize("requested", ["meta", "auto"])
@pytest.mark.parametrize("worker", ["seed", "trial"])
def test_a_ray_train_worker_trains_on_the_device(ray_train_worker, worker, requested):
    from tuning.train_seeds import seed_worker
    from tuning.tune import tune_worker

    with pytest.raises(Reached):
        seed_worker(seed_loop(requested)) if worker == "seed" else tune_worker(trial_loop(requested))
    assert str(ray_train_worker["device"]) == "meta"  # asked for, or (auto) the device Ray Train assigned


def test_training_in_this_process_hands_the_device_on(tiny_dataset, monkeypatch, tmp_path):
    from affect_core import experiment
    from flows.jobs import TrainJob, run_train

    seen: list[object] = []

    def train_run(*args: object, device: object = None, **kwargs: object) -> None:
        seen.append(device)
        raise Reached

    monkeypatch.setattr(experiment, "train_run", train_run)
    for device in ("meta", "auto"):
        with pytest.raises(Reached):
            run_train(TrainJob(tiny_dataset, str(tmp_path / "out"), ray=False, device=device, progress=False))
    assert seen == ["meta", "auto"]  # "auto" is the device rule's to read, as on every branch


@CUDA
@pytest.mark.parametrize("worker", ["seed", "trial"])
def test_a_ray_train_worker_asked_for_a_gpu_where_there_is_none_fails_in_one_line(ray_train_worker, worker):
    from tuning.train_seeds import seed_worker
    from tuning.tune import tune_worker

    with pytest.raises(AffectError, match="no CUDA GPU") as error:
        seed_worker(seed_loop("cuda")) if worker == "seed" else tune_worker(trial_loop("cuda"))
    assert "\n" not in str(error.value) and "device" not in ray_train_worker


@CUDA
def test_a_gpu_asked_for_where_there_is_none_is_one_clear_error_on_every_branch(tiny_dataset, monkeypatch, tmp_path):
    from affect_core.data import dataset
    from flows.jobs import ScoreJob, TrainJob, TuneJob, run_score, run_train, run_tune
    from tuning.score import VideoScorer

    (tmp_path / "root" / "videos").mkdir(parents=True)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out, model = str(tmp_path / "out"), str(tmp_path / "m")

    def scoring_actor() -> None:
        monkeypatch.setattr(dataset, "DatasetReader", lambda *a, **k: None)
        VideoScorer(
            data_url="d", model_url="m", out_url="memory://p", feature_set=None, version="0", storage_options=None,
            target_file_bytes=1, threads=torch.get_num_threads(), use_gpu=False, device="cuda",
        )  # fmt: skip

    branches = {
        "train here": lambda: run_train(TrainJob(tiny_dataset, out, ray=False, device="cuda", progress=False)),
        "train on Ray": lambda: run_train(TrainJob(tiny_dataset, out, ray=True, device="cuda")),
        "tune": lambda: run_tune(TuneJob(tiny_dataset, out, device="cuda")),
        "score here": lambda: run_score(ScoreJob(tiny_dataset, model, out, ray=False, device="cuda")),
        "score on Ray": lambda: run_score(ScoreJob(tiny_dataset, model, out, ray=True, device="cuda")),
        "videos": lambda: run_score(ScoreJob(str(tmp_path / "root"), model, out, ray=False, device="cuda")),
        "scoring actor": scoring_actor,
    }
    for name, branch in branches.items():
        with pytest.raises(AffectError, match="cuda") as error:
            branch()
        assert "\n" not in str(error.value), name
