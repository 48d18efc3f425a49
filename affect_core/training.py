"""The training loop: S seeds of one model variant in one process (S = 1 for one model), Adam, BPTT over whole
sequences (or truncated windows), early stopping per seed on dev CCC, seeded and deterministic on CPU, checkpoint and
resume, a progress bar and a result record per seed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
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
from affect_core.device import resolve_device
from affect_core.errors import AffectError
from affect_core.features import FeatureStatistics, FeatureTransform, feature_statistics, transform_from_statistics
from affect_core.inference import evaluate_seeds
from affect_core.losses import affect_loss_parts
from affect_core.model import AffectModel, bounded_state, first_nonfinite, host_face_rows, nonfinite_error
from affect_core.parallel import Workers, natural_key
from affect_core.storage import Where, resolve


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
    rater_lags: {rater: (mu in frames, sigma^2)} with per-rater targets, else empty.
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
    rater_lags: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Batch:
    """x: (B, T, d) float32 with NaN rows (no face or padding); labels: (B, T, k) NaN where unlabelled or padded;
    observed: (B, T) bool, the frames with a face (found on the host), or None when every frame has one."""

    x: torch.Tensor
    labels: torch.Tensor
    observed: torch.Tensor | None = None


def stack_videos(
    videos: list[Video],
    transform: FeatureTransform,
    dimensions: tuple[str, ...],
    fps: float,
    raters: tuple[str, ...] = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Transformed features and label tracks of each video: [(x (T, d'), labels (T, k))]; with ``raters`` the raters'
    own traces instead, (T, R * k), rater r's dimensions in columns [r * k, (r + 1) * k) (NaN where a rater gave
    none)."""
    out = []
    for v in videos:
        x = transform.apply(v.features)
        columns = [(rater, dim) for rater in raters for dim in dimensions] or [(None, dim) for dim in dimensions]
        labels = np.full((v.num_frames, len(columns)), np.nan, dtype=np.float32)
        for j, (rater, dim) in enumerate(columns):
            track = v.labels(dim) if rater is None else (v.ratings or {}).get(f"{dim}/{rater}")
            if track is not None:
                labels[:, j] = track
        out.append((x, labels))
    return out


def rater_names(videos: list[Video], dimensions: tuple[str, ...], workers: Workers | None = None) -> tuple[str, ...]:
    """The raters with a trace of every one of ``dimensions`` in some video (over every worker's shard), sorted."""
    found = sorted(
        {
            key.split("/", 1)[1]
            for v in videos
            for key in (v.ratings or {})
            if all(f"{dim}/{key.split('/', 1)[1]}" in (v.ratings or {}) for dim in dimensions)
        }
    )
    if workers is not None:
        found = sorted({name for names in workers.gather(found) for name in names})
    if not found:
        raise AffectError(
            f"training: --targets raters needs per-rater traces of {'/'.join(dimensions)} (e.g. AVEC2016's "
            "ratings_individual); the train split has none"
        )
    return tuple(found)


def pad_batch(items: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    length = max(len(x) for x, _ in items)
    xs = np.full((len(items), length, items[0][0].shape[1]), np.nan, dtype=np.float32)
    ys = np.full((len(items), length, items[0][1].shape[1]), np.nan, dtype=np.float32)
    for i, (x, y) in enumerate(items):
        xs[i, : len(x)] = x
        ys[i, : len(y)] = y
    observed = host_face_rows(xs)
    return Batch(torch.from_numpy(xs), torch.from_numpy(ys), None if observed is None else torch.from_numpy(observed))


def draw_windows(
    lengths: list[int], window: int, batch_size: int, rng: np.random.Generator
) -> list[list[tuple[int, int]]]:
    """One epoch of truncated-BPTT windows: (video index, first frame) per window, in batches of ``batch_size``.
    Windows are drawn at random covering the frames about once (a video's share of the draws is its share of the
    frames); drawn from the lengths alone, so data-parallel workers draw the same windows."""
    sizes = np.asarray(lengths)
    count = max(1, int(math.ceil(sizes.sum() / window)))
    picks = rng.choice(len(sizes), size=count, p=sizes / sizes.sum())
    windows = [(int(i), int(rng.integers(0, max(int(sizes[i]) - window, 0) + 1))) for i in picks]
    return [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]


def epoch_batches(
    items: list[tuple[np.ndarray, np.ndarray]], window: int | None, batch_size: int, rng: np.random.Generator
) -> list[Batch]:
    """Full-length BPTT: one batch of all sequences. Truncated: the windows of :func:`draw_windows`."""
    if window is None:
        return [pad_batch(items)]
    return [
        pad_batch([(items[i][0][a : a + window], items[i][1][a : a + window]) for i, a in batch])
        for batch in draw_windows([len(x) for x, _ in items], window, batch_size, rng)
    ]


def prepare_training(
    train: list[Video], config: RunConfig, workers: Workers | None = None
) -> tuple[FeatureTransform, list[tuple[np.ndarray, np.ndarray]], float]:
    """Check the train split, fit the feature transform on it, and complete ``config.model`` in place (input width,
    fps from the data, and the manual-alignment delay by grid search when it is not set).

    workers: data-parallel workers, each holding its shard of ``train``: the transform and the delay are fitted from
    statistics summed over the workers (the same as on the whole split).
    Returns the transform, the transformed training items [(x (T, d'), labels (T, k))] and the frame rate.
    """
    dims = config.model.affect_dimensions
    counts = [len(train)] if workers is None else workers.gather(len(train))
    if config.train.targets == "raters" and not config.model.raters:
        config.model.raters = rater_names(train, dims, workers)
        config.model.__post_init__()
    labelled = any(v.labels(d) is not None for v in train for d in dims)
    if not sum(counts):
        raise AffectError("training: the train split has no videos")
    if not any([labelled] if workers is None else workers.gather(labelled)):
        raise AffectError(f"training: no train video has {'/'.join(dims)} labels")
    rates = [float(v.fps) for v in train[:1]]
    fps = (rates if workers is None else [r for rs in workers.gather(rates) for r in rs])[0]
    stats = feature_statistics([v.features for v in train], config.features.columns)
    if workers is not None:
        stats = functools.reduce(FeatureStatistics.merged, workers.gather(stats))
    transform = transform_from_statistics(stats, config.features)
    config.model.input_dim = transform.output_dim
    config.model.fps = fps
    train_items = stack_videos(train, transform, dims, fps, config.model.raters)
    if config.model.align == "manual" and config.model.manual_shift is None:
        # One delay per model: the mean over its dimensions of each dimension's best delay.
        shifts = [
            choose_manual_shift(
                [x for x, _ in train_items], [y[:, j] for _, y in train_items], fps=fps, workers=workers
            )
            for j in range(len(dims))
        ]
        config.model.manual_shift = int(round(float(np.mean(shifts))))
    return transform, train_items, fps


def build_optimizer(model: AffectModel, config: RunConfig) -> torch.optim.Adam:
    """Adam over :meth:`AffectModel.parameter_groups` (the alignment parameters at their own learning rate)."""
    return torch.optim.Adam(model.parameter_groups(config.train.lr, config.train.lr_align), betas=config.train.betas)


def stacked_optimizer_state(model: AffectModel, saved: dict[str, Any]) -> dict[str, Any]:
    """Adam's state from a checkpoint in the layout of ``model``'s parameters (:meth:`AffectModel.parameter_groups`).

    Checkpoints written before the filters' and alignments' parameters were stacked along the seed axis hold one
    entry per seed and parameter, seed-major (``filters.0.q``, ``filters.0.r``, ..., ``filters.1.q``, ...), after the
    front-end's; their moments are stacked here row by row (a seed without any kept no state: zeros) and the step
    count is the largest (that of the seeds still training, the only ones whose state is used). A checkpoint in the
    current layout passes unchanged.
    """
    groups = model.parameter_groups(0.0, 0.0)
    params = [p for group in groups for p in group["params"]]
    saved_indices = [index for group in saved["param_groups"] for index in group["params"]]
    if len(params) == len(saved_indices) and all(
        saved["state"].get(index) is None or saved["state"][index]["exp_avg"].shape == p.shape
        for index, p in zip(saved_indices, params, strict=True)
    ):
        return saved  # the current layout (with one seed the earlier one has as many entries, but unstacked shapes)
    names = {id(p): name for name, p in model.named_parameters()}
    old_names = []  # per group, the parameter names of the layout with one module per seed
    for group in groups:
        frontend = [names[id(p)] for p in group["params"] if names[id(p)].startswith("frontend.")]
        stacked = [names[id(p)].partition(".") for p in group["params"] if not names[id(p)].startswith("frontend.")]
        per_seed = [f"{kind}.{s}.{leaf}" for s in range(model.seeds) for kind, _, leaf in stacked]
        old_names.append(frontend + per_seed)
    if [len(n) for n in old_names] != [len(g["params"]) for g in saved["param_groups"]]:
        raise AffectError("training checkpoint: its optimizer state does not fit this model")
    old_state = {
        name: saved["state"].get(index)
        for names_in_group, group in zip(old_names, saved["param_groups"], strict=True)
        for name, index in zip(names_in_group, group["params"], strict=True)
    }
    state: dict[int, dict[str, Any]] = {}
    param_groups = []
    index = 0
    for group, saved_group in zip(groups, saved["param_groups"], strict=True):
        indices = []
        for p in group["params"]:
            name = names[id(p)]
            kind, _, leaf = name.partition(".")
            if kind == "frontend":
                entry = old_state[name]
            else:
                rows = [old_state[f"{kind}.{s}.{leaf}"] for s in range(model.seeds)]
                entry = _stacked_moments(rows, p) if any(r is not None for r in rows) else None
            if entry is not None:
                state[index] = entry
            indices.append(index)
            index += 1
        param_groups.append({**saved_group, "params": indices})
    return {"state": state, "param_groups": param_groups}


def _stacked_moments(rows: list[dict[str, Any] | None], like: torch.Tensor) -> dict[str, Any]:
    """Adam's per-seed states (one parameter of one seed each, None for a seed without state) as one state of the
    stacked parameter ``like`` `(S, ...)`."""
    present = [r for r in rows if r is not None]
    entry: dict[str, Any] = {"step": max((r["step"] for r in present), key=float)}
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in present[0]:
            zeros = torch.zeros_like(like[0], dtype=present[0][key].dtype, device=present[0][key].device)
            entry[key] = torch.stack([zeros if r is None else r[key].reshape(zeros.shape) for r in rows])
    return entry


SeedEpochCallback = Callable[[int, EpochRecord], None]
"""Called after each epoch of each seed still training: (seed, record)."""


def train_model(
    train: list[Video],
    dev: list[Video],
    config: RunConfig,
    *,
    checkpoint_path: Where | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train one model (seed ``config.train.seed``): the one-seed case of :func:`train_seeds`."""
    callback = None if on_epoch is None else (lambda _seed, record: on_epoch(record))
    return train_seeds(
        train,
        dev,
        config,
        [config.train.seed],
        checkpoint_path=checkpoint_path,
        resume=resume,
        progress=progress,
        on_epoch=callback,
        device=device,
    )[0]


def train_seeds(
    train: list[Video],
    dev: list[Video],
    config: RunConfig,
    seeds: list[int],
    *,
    checkpoint_path: Where | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: SeedEpochCallback | None = None,
    device: str | torch.device | None = None,
    workers: Workers | None = None,
) -> list[TrainResult]:
    """Train one model per seed in ``seeds``, together as one :class:`AffectModel` of S seeds; early stopping per seed
    on its mean dev CCC over the model's affect dimensions.

    Seeds never interact: seed s starts from the weights ``torch.manual_seed(s)`` draws, takes its truncated-BPTT
    windows from ``np.random.default_rng(s)``, its loss is its own term of the summed loss, its gradient is clipped on
    its own norm, Adam's update is elementwise, and a seed that has stopped is restored after every step. So each
    result is what training that seed alone gives (up to float summation order), and S seeds cost far less than S
    runs: the front-end of every seed is one batched product per layer.

    checkpoint_path: a Location (resolved where the job entered) or a URL (resolved here, once, with the
    environment's S3 settings); written after every epoch, read back when ``resume`` is set.
    on_epoch: called after each epoch of each seed still training, with (seed, record) (Ray reports through it).
    device: where the model trains; None picks the GPU when one is present, else the CPU. The batches go to it as
    pinned host memory with non-blocking copies. Results on the CPU are deterministic for a seed.
    Each result's ``train_seconds`` (and each record's ``seconds``) is the wall time divided by the number of seeds
    training at that moment, so that per-seed figures stay comparable with one-seed runs.
    workers: data-parallel training (:mod:`affect_core.parallel`): ``train`` and ``dev`` are this worker's shards; the
    workers draw the same windows, sum their gradients and gather their dev metrics, so each returns the model one
    worker holding every video would train (up to float summation order). The leader writes the checkpoints.
    """
    started = time.perf_counter()
    checkpoint = resolve(checkpoint_path) if checkpoint_path is not None else None
    if not seeds:
        raise AffectError("training: no seeds given")
    if len(set(seeds)) != len(seeds):
        raise AffectError(f"training: seeds must be distinct, got {seeds}")
    base = copy.deepcopy(config)
    transform, train_items, fps = prepare_training(train, base, workers)
    layout = _window_layout(train, workers)
    has_dev = bool(dev) if workers is None else any(workers.gather(bool(dev)))
    hp = base.train
    target = resolve_device(device)
    S = len(seeds)
    model = AffectModel(base.model, seeds=[int(s) for s in seeds]).to(target)
    optimizer = build_optimizer(model, base)
    rngs = [np.random.default_rng(seed) for seed in seeds]
    progress_state: dict[str, Any] = {
        "epochs": [0] * S,
        "bad_epochs": [0] * S,
        "best_epoch": [0] * S,
        "best_score": [-math.inf] * S,
        "histories": [[] for _ in range(S)],
        "frozen": [],
    }
    best_state = [model.seed_state(s) for s in range(S)]
    if resume and checkpoint is not None and checkpoint.exists():
        ckpt = load_checkpoint(checkpoint)
        if list(ckpt.get("seeds", [])) != list(seeds):
            raise AffectError(f"{checkpoint.display()}: a checkpoint of seeds {ckpt.get('seeds')}, not {list(seeds)}")
        missing = sorted({key.rpartition(".")[2] for key in model.state_dict() if key not in ckpt["model"]})
        if missing:  # e.g. written before the filters' gap step: its optimizer and best states lack them too
            raise AffectError(
                f"{checkpoint.display()}: a checkpoint of an earlier model without {', '.join(missing)}; it cannot "
                "continue this run: train again without --resume (or into another --out)"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(stacked_optimizer_state(model, ckpt["optimizer"]))
        best_state = ckpt["best_states"]
        progress_state = ckpt["progress"]
        for rng, rng_state in zip(rngs, ckpt["numpy_rngs"], strict=True):
            rng.bit_generator.state = rng_state
    epochs, bad_epochs = progress_state["epochs"], progress_state["bad_epochs"]
    best_epoch, best_score = progress_state["best_epoch"], progress_state["best_score"]
    histories = [[EpochRecord(**r) for r in h] for h in progress_state["histories"]]
    frozen = {s: model.seed_state(s) for s in progress_state["frozen"]}

    def is_active(s: int) -> bool:
        return epochs[s] < hp.max_epochs and bad_epochs[s] < hp.patience

    whole = [to_device(pad_batch(train_items), target) if train_items else None] if hp.window_frames is None else None
    label = f"epochs ({S} seeds)" if S > 1 else "epochs"
    bar = tqdm(total=hp.max_epochs, initial=max(epochs), disable=not progress, desc=label, leave=False)
    active = [s for s in range(S) if is_active(s)]
    while active:
        t0 = time.perf_counter()
        model.train()
        losses: dict[int, list[float]] = {s: [] for s in active}
        steps = _epoch_steps(train_items, hp, rngs, active, S, whole, target, layout)
        faults: list[torch.Tensor] = []
        step_losses = [
            training_step(
                model, optimizer, step, active, fps=fps, train=hp, frozen=frozen, workers=workers, faults=faults
            )
            for step in steps
        ]
        per_step = torch.stack(step_losses).cpu().tolist()  # the epoch's one wait for the device
        fault = _state_fault(
            [step for step in steps if step is not None], [f.cpu() for f in faults], active, train, seeds, epochs
        )
        if workers is not None:  # raised on every worker, none left waiting in a collective
            fault = next((f for f in workers.gather(fault) if f is not None), None)
        if fault is not None:
            raise AffectError(fault)
        for i, s in enumerate(active):
            losses[s] = [row[i] for row in per_step]
            if not all(math.isfinite(v) for v in losses[s]):
                raise AffectError(
                    f"training: the loss of seed {seeds[s]} became {losses[s][-1]} at epoch {epochs[s] + 1}"
                )
        scores = evaluate_seeds(model, transform, dev, active, workers=workers) if has_dev else None
        seconds = (time.perf_counter() - t0) / len(active)
        for i, s in enumerate(active):
            epochs[s] += 1
            dev_score = mean_ccc(scores[i]) if scores is not None else -float(np.mean(losses[s]))
            if dev_score > best_score[s]:
                best_score[s], best_epoch[s], bad_epochs[s] = dev_score, epochs[s], 0
                best_state[s] = model.seed_state(s)
            else:
                bad_epochs[s] += 1
            record = EpochRecord(epochs[s], float(np.mean(losses[s])), dev_score, seconds)
            histories[s].append(record)
            if not is_active(s):
                frozen[s] = model.seed_state(s)
        if checkpoint is not None and (workers is None or workers.leader):
            progress_state.update(
                histories=[[dataclasses.asdict(r) for r in h] for h in histories], frozen=sorted(frozen)
            )
            save_checkpoint(
                checkpoint,
                {
                    "seeds": list(seeds),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_states": best_state,
                    "progress": progress_state,
                    "numpy_rngs": [rng.bit_generator.state for rng in rngs],
                },
            )
        if on_epoch is not None:
            for s in active:
                on_epoch(seeds[s], histories[s][-1])
        lead = active[0]
        bar.set_postfix(
            loss=f"{histories[lead][-1].train_loss:.3f}",
            dev_ccc=f"{histories[lead][-1].dev_ccc:.3f}",
            mu=f"{model.learned_lag(lead)[0]:.1f}",
        )
        active = [s for s in active if is_active(s)]
        bar.update(max(epochs) - bar.n)
    bar.close()

    for s in range(S):
        model.load_seed_state(s, best_state[s])
    model.eval()
    train_metrics = evaluate_seeds(model, transform, train, workers=workers)
    dev_metrics = evaluate_seeds(model, transform, dev, workers=workers) if has_dev else None
    seconds = (time.perf_counter() - started) / S
    results = []
    for s, seed in enumerate(seeds):
        seed_config = copy.deepcopy(base)
        seed_config.train.seed = int(seed)
        metrics = {"train": train_metrics[s]}
        if dev_metrics is not None:
            metrics["dev"] = dev_metrics[s]
        mu, sigma2 = model.learned_lag(s)
        single = model.seed_model(s).eval()
        results.append(
            TrainResult(
                model=single,
                transform=transform,
                config=seed_config,
                metrics=metrics,
                mu_frames=mu,
                sigma2=sigma2,
                epochs=epochs[s],
                best_epoch=best_epoch[s],
                train_seconds=seconds,
                history=histories[s],
                rater_lags=model.rater_lags(s),
            )
        )
    return results


@dataclass
class Step:
    """One optimisation step's data on the model's device. x: (B, T, d) shared by every seed, or (S, B, T, d);
    observed: the frames with a face, (B, T) or (S, B, T), None when all have one; labels: per seed (B, T_s, k);
    lengths: per seed T_s (a seed's windows may be shorter than the padded x)."""

    x: torch.Tensor
    observed: torch.Tensor | None
    labels: list[torch.Tensor]
    lengths: list[int]
    origins: list[list[tuple[int, int, int]]] | None = None
    """Per seed, per row: (train item, its first frame, frames) of the window in that row (None: not known)."""


def training_step(
    model: AffectModel,
    optimizer: torch.optim.Optimizer,
    step: Step | None,
    active: list[int],
    *,
    fps: float,
    train: Any,
    frozen: dict[int, dict[str, torch.Tensor]] | None = None,
    workers: Workers | None = None,
    faults: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """One Adam step of the ``active`` seeds: loss (17) per seed, their sum backward, per-seed gradient clipping, the
    update, then the stopped seeds restored. Returns the active seeds' losses, shape (len(active),), on the model's
    device: nothing here waits for the device (no host synchronisation).

    workers: data-parallel workers: each computes its windows' part of the loss (its sums over sequences, divided by
    the counts of every worker's sequences), then the gradients and losses are summed over the workers, so every worker
    takes the step one worker with all the windows would. A worker without windows in this step passes None.
    faults: when given (and ``step`` is not None), gets the step's (len(active), B) first frame of each row whose
    filtered state is not finite (-1: none), on the device, read with the losses (:func:`first_nonfinite`).
    The predictions the loss sees are the model's: :func:`affect_core.model.bounded_state` of the aligned state.
    """
    optimizer.zero_grad()
    k = model.config.num_dims * max(len(model.config.raters), 1)  # the label columns
    if step is None:
        parts = None
    else:
        causal = model.causal(step.x, mask=step.observed, seeds=active, checked=True)
        parts = []
        for s in active:
            z = causal.states[s]
            assert z is not None
            y = bounded_state(model.training_targets(z[:, : step.lengths[s]], s))
            parts.append(affect_loss_parts(y, step.labels[s], fps=fps, lambda1=train.lambda1, lambda2=train.lambda2))
        if faults is not None:
            faults.append(torch.stack([first_nonfinite(causal.states[s][:, : step.lengths[s]]) for s in active]))
    like = model.frontend.head_bias
    if parts is None:
        sums, counts = like.new_zeros((len(active), k)), like.new_zeros((len(active), k))
    else:
        sums, counts = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    if workers is not None:
        counts = workers.sum_(counts.detach().clone())
    losses = (sums / counts.clamp_min(1)).mean(-1)  # (A,): the mean over the model's affect dimensions
    if parts is not None:
        losses.sum().backward()
    if workers is not None:
        losses = _sum_gradients(model, losses.detach(), workers)
    model.clip_grad_norm_per_seed(train.grad_clip)
    optimizer.step()
    for s, state in (frozen or {}).items():
        model.load_seed_state(s, state)
    return losses.detach()


def _sum_gradients(model: AffectModel, losses: torch.Tensor, workers: Workers) -> torch.Tensor:
    """Sums every parameter's gradient and the losses over the workers in one collective; a parameter that no worker
    has a gradient for keeps none (as Adam expects). Returns the summed losses."""
    params = list(model.parameters())
    like = model.frontend.head_bias
    had = torch.tensor([p.grad is not None for p in params], dtype=like.dtype, device=like.device)
    flat = torch.cat(
        [p.grad.reshape(-1) if p.grad is not None else like.new_zeros(p.numel()) for p in params] + [losses, had]
    )
    workers.sum_(flat)
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone() if flat[-len(params) + i] > 0 else None
        offset += n
    return flat[offset : offset + len(losses)]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device``: from pinned host memory with non-blocking copies when that is a GPU."""
    if device.type == "cpu":
        return batch
    pin = device.type == "cuda"
    moved = [
        None if t is None else (t.pin_memory() if pin else t).to(device, non_blocking=True)
        for t in (batch.x, batch.labels, batch.observed)
    ]
    return Batch(*moved)


@dataclass
class _WindowLayout:
    """Where the train videos sit: every worker's video lengths in one order (the windows are drawn over them), and
    which of those videos this worker holds (global index -> index into its own train items)."""

    lengths: list[int]
    local: dict[int, int]


def _window_layout(train: list[Video], workers: Workers | None) -> _WindowLayout:
    if workers is None:
        return _WindowLayout([v.num_frames for v in train], {i: i for i in range(len(train))})
    mine = [(v.video_id, v.num_frames) for v in train]
    everyone = sorted((item for part in workers.gather(mine) for item in part), key=lambda item: natural_key(item[0]))
    position = {video_id: i for i, (video_id, _) in enumerate(everyone)}
    return _WindowLayout([n for _, n in everyone], {position[v.video_id]: j for j, v in enumerate(train)})


def _epoch_steps(
    train_items: list[tuple[np.ndarray, np.ndarray]],
    hp: Any,
    rngs: list[np.random.Generator],
    active: list[int],
    seeds: int,
    whole: list[Batch | None] | None,
    device: torch.device,
    layout: _WindowLayout,
) -> list[Step | None]:
    """One epoch's steps (None: this worker holds none of a step's windows). Whole sequences: one batch shared by
    every seed, x `(B, T, d)`. Truncated windows: each active seed draws its own, x `(S, B, T_max, d)` padded with NaN
    (a seed that has stopped draws none and gets a copy of an active seed's windows, whose output is unused)."""
    if whole is not None:
        origins = [[(i, 0, len(x)) for i, (x, _) in enumerate(train_items)]] * seeds
        return [
            None if b is None else Step(b.x, b.observed, [b.labels] * seeds, [b.x.shape[1]] * seeds, origins)
            for b in whole
        ]
    window = hp.window_frames
    drawn = {s: draw_windows(layout.lengths, window, hp.batch_size, rngs[s]) for s in active}
    steps: list[Step | None] = []
    for j in range(len(drawn[active[0]])):
        mine = []
        for s in range(seeds):
            batch = drawn[s][j] if s in drawn else drawn[active[0]][j]
            mine.append([(layout.local[i], a) for i, a in batch if i in layout.local])
        if not any(mine[s] for s in active):
            steps.append(None)
            continue
        rows = max(len(m) for m in mine)
        lengths = [max((min(window, len(train_items[i][0]) - a) for i, a in m), default=0) for m in mine]
        lengths = [n or max(lengths) for n in lengths]  # a seed without windows here: all-NaN rows, no loss
        width, dims = train_items[0][0].shape[1], train_items[0][1].shape[1]
        xs = np.full((seeds, rows, max(lengths), width), np.nan, dtype=np.float32)
        labels = [np.full((rows, lengths[s], dims), np.nan, dtype=np.float32) for s in range(seeds)]
        for s, m in enumerate(mine):
            for r, (i, a) in enumerate(m):
                x, y = train_items[i][0][a : a + window], train_items[i][1][a : a + window]
                xs[s, r, : len(x)] = x
                labels[s][r, : len(y)] = y
        observed = host_face_rows(xs)
        mask = None if observed is None else torch.from_numpy(observed)
        stacked = to_device(Batch(torch.from_numpy(xs), torch.zeros(0), mask), device)
        moved = [to_device(Batch(torch.zeros(0), torch.from_numpy(y)), device).labels for y in labels]
        origins = [[(i, a, min(window, len(train_items[i][0]) - a)) for i, a in m] for m in mine]
        steps.append(Step(stacked.x, stacked.observed, moved, lengths, origins))
    return steps


def _state_fault(
    steps: list[Step],
    faults: list[torch.Tensor],
    active: list[int],
    train: list[Video],
    seeds: list[int],
    epochs: list[int],
) -> str | None:
    """The error message of the first frame of a train video whose filtered state was not finite in one of an epoch's
    ``steps`` (``faults``: what :func:`training_step` found for each), or None. Padding rows and frames are not a
    video's and are passed over."""
    for step, found in zip(steps, faults, strict=True):
        for i, s in enumerate(active):
            origins = None if step.origins is None else step.origins[s]
            for row, frame in enumerate(found[i].tolist()):
                if frame < 0:
                    continue
                if origins is None:
                    where = f"training: row {row} of a batch (seed {seeds[s]}, epoch {epochs[s] + 1})"
                    return str(nonfinite_error(where, frame))
                if row < len(origins) and frame < origins[row][2]:
                    item, start, _ = origins[row]
                    where = f"training: video {train[item].video_id!r} (seed {seeds[s]}, epoch {epochs[s] + 1})"
                    return str(nonfinite_error(where, start + frame))
    return None


def mean_ccc(metrics: dict[str, dict[str, float]]) -> float:
    """The early-stopping score: the mean CCC over a model's affect dimensions (finite ones)."""
    values = [m["ccc"] for m in metrics.values() if np.isfinite(m["ccc"])]
    return float(np.mean(values)) if values else -math.inf


def save_checkpoint(url: Where, payload: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """Write a training checkpoint (tensors and plain values only) atomically where the store allows (a URL is
    resolved here, a Location was resolved before)."""
    from affect_core.storage import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    loc = resolve(url, storage_options)
    write_bytes_atomic(loc.fs, loc.path, buffer.getvalue())


def load_checkpoint(url: Where, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (weights_only); a URL is resolved here, a Location was
    resolved before."""
    from affect_core.storage import read_bytes

    loc = resolve(url, storage_options)
    try:
        return torch.load(io.BytesIO(read_bytes(loc.fs, loc.path)), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is an unusable checkpoint
        raise AffectError(f"{loc.display()}: not a loadable training checkpoint ({type(exc).__name__})") from None
