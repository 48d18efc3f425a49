"""Single-process training: Adam, BPTT over whole sequences (or truncated windows), early stopping on dev CCC,
seeded and deterministic on CPU, checkpoint and resume, a progress bar and a result record.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from affect_core.alignment import choose_manual_shift
from affect_core.config import RunConfig
from affect_core.data.records import Video
from affect_core.errors import AffectError
from affect_core.features import FeatureTransform, fit_feature_transform
from affect_core.inference import evaluate_videos
from affect_core.losses import affect_loss
from affect_core.model import AffectModel


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    dev_ccc: float
    seconds: float


@dataclass
class TrainResult:
    """What one training run produced: the best model (by dev CCC), its transform and a result record.

    metrics: {split: {dimension: {ccc, rmse, pcc}}} of the best model.
    """

    model: AffectModel
    transform: FeatureTransform
    config: RunConfig
    metrics: dict[str, dict[str, dict[str, float]]]
    mu_frames: float
    sigma2: float
    epochs: int
    best_epoch: int
    train_seconds: float
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class Batch:
    """x: (B, T, d) float32 with NaN rows (no face or padding); labels: (B, T, k) NaN where unlabelled or padded."""

    x: torch.Tensor
    labels: torch.Tensor


def stack_videos(
    videos: list[Video], transform: FeatureTransform, dimensions: tuple[str, ...], fps: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Transformed features and label tracks of each video: [(x (T, d'), labels (T, k))]."""
    out = []
    for v in videos:
        x = transform.apply(v.features)
        labels = np.full((v.num_frames, len(dimensions)), np.nan, dtype=np.float32)
        for j, dim in enumerate(dimensions):
            track = v.labels(dim)
            if track is not None:
                labels[:, j] = track
        out.append((x, labels))
    return out


def pad_batch(items: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    length = max(len(x) for x, _ in items)
    xs = np.full((len(items), length, items[0][0].shape[1]), np.nan, dtype=np.float32)
    ys = np.full((len(items), length, items[0][1].shape[1]), np.nan, dtype=np.float32)
    for i, (x, y) in enumerate(items):
        xs[i, : len(x)] = x
        ys[i, : len(y)] = y
    return Batch(torch.from_numpy(xs), torch.from_numpy(ys))


def epoch_batches(
    items: list[tuple[np.ndarray, np.ndarray]], window: int | None, batch_size: int, rng: np.random.Generator
) -> list[Batch]:
    """Full-length BPTT: one batch of all sequences. Truncated: random windows covering the frames once per epoch."""
    if window is None:
        return [pad_batch(items)]
    lengths = np.array([len(x) for x, _ in items])
    count = max(1, int(math.ceil(lengths.sum() / window)))
    picks = rng.choice(len(items), size=count, p=lengths / lengths.sum())
    windows = []
    for i in picks:
        x, y = items[i]
        start = int(rng.integers(0, max(len(x) - window, 0) + 1))
        windows.append((x[start : start + window], y[start : start + window]))
    return [pad_batch(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]


def prepare_training(
    train: list[Video], config: RunConfig
) -> tuple[FeatureTransform, list[tuple[np.ndarray, np.ndarray]], float]:
    """Check the train split, fit the feature transform on it, and complete ``config.model`` in place (input width,
    fps from the data, and the manual-alignment delay by grid search when it is not set).

    Returns the transform, the transformed training items [(x (T, d'), labels (T, k))] and the frame rate.
    """
    dims = config.model.affect_dimensions
    if not train:
        raise AffectError("training: the train split has no videos")
    if not any(v.labels(d) is not None for v in train for d in dims):
        raise AffectError(f"training: no train video has {'/'.join(dims)} labels")
    fps = float(train[0].fps)
    transform = fit_feature_transform([v.features for v in train], config.features)
    config.model.input_dim = transform.output_dim
    config.model.fps = fps
    train_items = stack_videos(train, transform, dims, fps)
    if config.model.align == "manual" and config.model.manual_shift is None:
        # One delay per model: the mean over its dimensions of each dimension's best delay.
        shifts = [
            choose_manual_shift([x for x, _ in train_items], [y[:, j] for _, y in train_items], fps=fps)
            for j in range(len(dims))
        ]
        config.model.manual_shift = int(round(float(np.mean(shifts))))
    return transform, train_items, fps


def build_optimizer(model: AffectModel, config: RunConfig) -> torch.optim.Adam:
    """Adam; the alignment parameters get their own learning rate so that mu reaches a lag of seconds."""
    align_ids = {id(p) for p in model.alignment_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in align_ids], "lr": config.train.lr}]
    if align_ids:
        groups.append({"params": model.alignment_parameters(), "lr": config.train.lr_align})
    return torch.optim.Adam(groups, betas=config.train.betas)


def train_model(
    train: list[Video],
    dev: list[Video],
    config: RunConfig,
    *,
    checkpoint_path: str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    storage_options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train one model on ``train``, early-stopping on the mean dev CCC over its affect dimensions.

    checkpoint_path: any fsspec URL; written after every epoch, read back when ``resume`` is set.
    on_epoch: called after each epoch (Ray reports dev CCC through it).
    device: where the model trains; None picks the GPU when one is present, else the CPU. Results on the CPU are
    deterministic for a seed.
    """
    started = time.perf_counter()
    config = copy.deepcopy(config)
    transform, train_items, fps = prepare_training(train, config)
    seed = config.train.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AffectModel(config.model).to(resolve_device(device))
    optimizer = build_optimizer(model, config)
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    best_state = copy.deepcopy(model.state_dict())
    if resume and checkpoint_path is not None and _exists(checkpoint_path, storage_options):
        ckpt = load_checkpoint(checkpoint_path, storage_options)
        model.load_state_dict(ckpt["model"])
        ckpt["best_model"] = {k: v.to(next(model.parameters()).device) for k, v in ckpt["best_model"].items()}
        optimizer.load_state_dict(ckpt["optimizer"])
        best_state = ckpt["best_model"]
        state = ckpt["state"]
        torch.set_rng_state(ckpt["torch_rng"])
        rng.bit_generator.state = ckpt["numpy_rng"]
    history = [EpochRecord(**r) for r in state["history"]]
    bar = tqdm(
        total=config.train.max_epochs,
        initial=state["epoch"],
        disable=not progress,
        desc="epochs",
        leave=False,
    )
    while state["epoch"] < config.train.max_epochs and state["bad_epochs"] < config.train.patience:
        t0 = time.perf_counter()
        model.train()
        losses = []
        for batch in epoch_batches(train_items, config.train.window_frames, config.train.batch_size, rng):
            optimizer.zero_grad()
            out = model(batch.x)
            loss = affect_loss(out.y, batch.labels, fps=fps, lambda1=config.train.lambda1, lambda2=config.train.lambda2)
            if not torch.isfinite(loss):
                raise AffectError(f"training: the loss became {float(loss)} at epoch {state['epoch'] + 1}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        state["epoch"] += 1
        dev_score = _mean_ccc(evaluate_videos(model, transform, dev)) if dev else -float(np.mean(losses))
        if dev_score > state["best_score"]:
            state.update(best_score=dev_score, best_epoch=state["epoch"], bad_epochs=0)
            best_state = copy.deepcopy(model.state_dict())
        else:
            state["bad_epochs"] += 1
        record = EpochRecord(state["epoch"], float(np.mean(losses)), dev_score, time.perf_counter() - t0)
        history.append(record)
        state["history"] = [dataclasses.asdict(r) for r in history]
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_model": best_state,
                    "state": state,
                    "torch_rng": torch.get_rng_state(),
                    "numpy_rng": rng.bit_generator.state,
                },
                storage_options,
            )
        mu, _ = model.learned_lag()
        bar.set_postfix(loss=f"{record.train_loss:.3f}", dev_ccc=f"{dev_score:.3f}", mu=f"{mu:.1f}")
        bar.update(1)
        if on_epoch is not None:
            on_epoch(record)
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    metrics = {"train": evaluate_videos(model, transform, train)}
    if dev:
        metrics["dev"] = evaluate_videos(model, transform, dev)
    mu, sigma2 = model.learned_lag()
    return TrainResult(
        model=model,
        transform=transform,
        config=config,
        metrics=metrics,
        mu_frames=mu,
        sigma2=sigma2,
        epochs=state["epoch"],
        best_epoch=state["best_epoch"],
        train_seconds=time.perf_counter() - started,
        history=history,
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The training device: the one asked for, else the GPU when one is present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _mean_ccc(metrics: dict[str, dict[str, float]]) -> float:
    values = [m["ccc"] for m in metrics.values() if np.isfinite(m["ccc"])]
    return float(np.mean(values)) if values else -math.inf


def save_checkpoint(url: str, payload: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """Write a training checkpoint (tensors and plain values only) atomically where the store allows."""
    from affect_core.storage import resolve, write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    loc = resolve(url, storage_options)
    write_bytes_atomic(loc.fs, loc.path, buffer.getvalue())


def load_checkpoint(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (weights_only)."""
    from affect_core.storage import read_bytes, resolve

    loc = resolve(url, storage_options)
    try:
        return torch.load(io.BytesIO(read_bytes(loc.fs, loc.path)), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is an unusable checkpoint
        raise AffectError(f"{url}: not a loadable training checkpoint ({type(exc).__name__})") from None


def _exists(url: str, storage_options: dict[str, Any] | None) -> bool:
    from affect_core.storage import exists, resolve

    loc = resolve(url, storage_options)
    return exists(loc.fs, loc.path)
