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
