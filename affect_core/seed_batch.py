"""Several seeds of one model variant trained in one process, stacked along a leading seed dimension.

Each seed is built exactly as :func:`affect_core.training.train_model` builds it (``torch.manual_seed(seed)`` before
the :class:`~affect_core.model.AffectModel`, windows from ``np.random.default_rng(seed)``), then the S models are
stacked parameter by parameter (``torch.func.stack_module_state``): every tensor gains a leading seed dimension S.
The forward pass of the stack:

    front-end, all seeds at once: per-seed Linear layers as batched matmuls over the seed dimension; the S LSTMs as one
        recurrence over a (S, B, H) state whose step is one batched matmul (`SeedLSTMRecurrence`, hand-derived
        backward), so a time step costs the same few tensor operations for 10 seeds as for one
    filter, per seed: the seed's own `KalmanFilter` / `ExtendedKalmanFilter` called on its slice of the stacked
        parameters (``torch.func.functional_call``), so every filter path (compiled kernel, scan) is reused unchanged
    smoothing and alignment, per seed: the seed's slice of mu', s (non-causal, applied after cropping to the length
        the seed's own batch had)

Seeds never interact: the loss is the sum of the per-seed losses, so each slice of a stacked parameter receives that
seed's gradient. Gradient clipping is per seed (the seed's norm over all its slices), Adam is elementwise (the stack's
update of slice s is the update a lone Adam would make), and a seed that has early-stopped is restored after every
step, so it no longer changes. At the end the stack is cut back into S ordinary models (`TrainResult.model`), so
artifacts and scoring are unchanged.

Not covered: mid-training checkpoints of a stack (a resumed group retrains its unfinished seeds from the start;
finished seeds are kept, see :func:`run_seeds_batched`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from tqdm.auto import tqdm

from affect_core.alignment import AdaptiveAlignment
from affect_core.config import RunConfig, config_json
from affect_core.data.records import Corpus, Video
from affect_core.errors import AffectError
from affect_core.experiment import SeedOutcome, SeedTask, load_seed_outcome, save_seed_outcome, select_model_features
from affect_core.features import FeatureTransform
from affect_core.losses import affect_loss
from affect_core.metrics import average_over_sequences, metrics_table
from affect_core.model import AffectModel, finite_rows
from affect_core.training import (
    Batch,
    EpochRecord,
    TrainResult,
    epoch_batches,
    pad_batch,
    prepare_training,
)

SeedEpochCallback = Callable[[int, EpochRecord], None]
"""Called after each epoch of each seed still training: (seed, record)."""


# ------------------------------------------------------------------------------------------------------------------
class SeedLSTMRecurrence(torch.autograd.Function):
    """The recurrent part of S independent single-layer LSTMs (PyTorch's gate order i, f, g, o), zero initial state.

    Inputs: xw, the input projections, shape `(S, B, T, 4H)`; w_hh, the recurrent weights, shape `(S, 4H, H)`;
    bias, both LSTM biases summed, shape `(S, 4H)`; save (as `FusedSeedLSTM`'s; this loop keeps its intermediates
    either way). Output: hidden states h_t, shape `(S, B, T, H)`.

    A TorchScript loop whose step is one batched matmul over the seed dimension plus a few elementwise operations on
    `(S, B, 4H)`; its backward pass is the LSTM's adjoint written out step by step (tested against torch.nn.LSTM's
    autograd). The stack takes it where the compiled `FusedSeedLSTM` does not apply (GPU, float64).
    """

    @staticmethod
    def forward(ctx: Any, xw: Tensor, w_hh: Tensor, bias: Tensor, save: bool = True) -> Tensor:  # type: ignore[override]
        time_major = (xw.detach() + bias.detach()[:, None, None, :]).permute(2, 0, 1, 3).contiguous()  # (T, S, B, 4H)
        acts, cells, tanh_cells, hidden = _steps()[0](time_major, w_hh.detach())
        ctx.save_for_backward(w_hh, acts, cells, tanh_cells, hidden)
        return hidden.permute(1, 2, 0, 3)

    @staticmethod
    def backward(ctx: Any, g_hidden: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:  # type: ignore[override]
        w_hh, acts, cells, tanh_cells, hidden = ctx.saved_tensors
        g_time_major = g_hidden.permute(2, 0, 1, 3).contiguous()
        g_gates, g_w_hh = _steps()[1](g_time_major, w_hh.detach(), acts, cells, tanh_cells, hidden)
        return g_gates.permute(1, 2, 0, 3), g_w_hh, g_gates.sum((0, 2)), None


class FusedSeedLSTM(torch.autograd.Function):
    """S LSTMs, compiled (`affect_core._seed_lstm`): float32 CPU tensors.

    Inputs: the layer below, transposed, shape `(S, D, B*T)` (row b*T + t is frame t of sequence b); w_ih
    `(S, 4H, D)`; w_hh `(S, 4H, H)`; bias `(S, 4H)` (both LSTM biases); B; save (keep what the backward pass reads:
    pass `torch.is_grad_enabled()`). Output: hidden states `(S, B, T, H)`. The forward runs a seed at a time: its
    input projections as one matrix product (which stays in cache), then `recurrent_forward`; the backward
    (`fused_backward`) takes the projection's adjoint inside, so the `(S, B, T, 4H)` gate adjoints are never written
    to memory.
    """

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, batch: int, save: bool):  # type: ignore[override]
        from affect_core import _seed_lstm
        from affect_core.filters.compiled import batch_slices, run_slices

        seeds, size = inputs.shape[0], w_hh.shape[-1]
        steps = inputs.shape[-1] // batch
        kept = steps if save else 1
        acts = np.empty((seeds, batch, kept, 4 * size), dtype=np.float32)
        cells = np.empty((seeds, batch, kept, size), dtype=np.float32)
        tanh_cells = np.empty((seeds, batch, kept, size), dtype=np.float32)
        hidden = np.empty((seeds, batch, steps, size), dtype=np.float32)
        recurrent = w_hh.detach().contiguous().numpy()
        zeros = np.zeros((batch, size), dtype=np.float32)  # zero initial state
        x, w_in, b_in = inputs.detach(), w_ih.detach(), bias.detach()  # the pool's threads record no graph either

        def run(part: slice) -> None:
            for s in range(seeds)[part]:
                pre = torch.addmm(b_in[s], x[s].T, w_in[s].T).numpy()  # (B*T, 4H)
                _seed_lstm.recurrent_forward(
                    pre, recurrent[s], zeros, zeros, acts[s], cells[s], tanh_cells[s], hidden[s]
                )

        run_slices(run, batch_slices(seeds))
        acts_t, cells_t, tanh_t, hidden_t = (torch.from_numpy(a) for a in (acts, cells, tanh_cells, hidden))
        ctx.save_for_backward(inputs, w_ih, w_hh, acts_t, cells_t, tanh_t, hidden_t)
        ctx.zeros = np.zeros((seeds, batch, size), dtype=np.float32)
        return hidden_t

    @staticmethod
    def backward(ctx: Any, g_hidden: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        from affect_core import _seed_lstm
        from affect_core.filters.compiled import batch_slices, run_slices

        inputs, w_ih, w_hh, *saved = (t.detach().contiguous().numpy() for t in ctx.saved_tensors)
        g = g_hidden.contiguous().numpy()
        zeros = ctx.zeros
        outputs = run_slices(
            lambda s: _seed_lstm.fused_backward(
                g[s], inputs[s], w_ih[s], w_hh[s], zeros[s], zeros[s], *(a[s] for a in saved)
            ),
            batch_slices(g_hidden.shape[0]),
        )
        g_inputs, g_w_ih, g_w_hh, g_bias = (_joined([o[i] for o in outputs]) for i in range(4))
        return g_inputs, g_w_ih, g_w_hh, g_bias, None, None


def _compiled_applies(tensor: Tensor) -> bool:
    """The numba kernels serve float32 CPU tensors."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32


def _joined(parts: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _lstm_forward_steps(xw: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward loop of `SeedLSTMRecurrence`: activations (T, S, B, 4H), c_t, tanh(c_t), h_t (T, S, B, H)."""
    steps, seeds, batch, gates_width = xw.shape
    H = gates_width // 4
    acts = torch.empty_like(xw)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    cells = xw.new_empty((steps, seeds, batch, H))
    tanh_cells = torch.empty_like(cells)
    hidden = torch.empty_like(cells)
    h = xw.new_zeros((seeds, batch, H))
    c = xw.new_zeros((seeds, batch, H))
    w_t = w_hh.transpose(1, 2)
    gates = xw.new_empty((seeds, batch, gates_width))
    for t in range(steps):
        torch.baddbmm(xw[t], h, w_t, out=gates)
        a = acts[t]
        torch.sigmoid(gates, out=a)
        torch.tanh(gates[:, :, 2 * H : 3 * H], out=a[:, :, 2 * H : 3 * H])
        c_new = cells[t]
        torch.mul(a[:, :, H : 2 * H], c, out=c_new)  # c_t = f c_{t-1} + i g
        c_new.addcmul_(a[:, :, :H], a[:, :, 2 * H : 3 * H])
        torch.tanh(c_new, out=tanh_cells[t])
        torch.mul(a[:, :, 3 * H :], tanh_cells[t], out=hidden[t])  # h_t = o tanh(c_t)
        h = hidden[t]
        c = c_new
    return acts, cells, tanh_cells, hidden


def _lstm_backward_steps(
    g_hidden: Tensor, w_hh: Tensor, acts: Tensor, cells: Tensor, tanh_cells: Tensor, hidden: Tensor
) -> tuple[Tensor, Tensor]:
    """The adjoint loop of `SeedLSTMRecurrence`: gradients w.r.t. xw (T, S, B, 4H) and w_hh (S, 4H, H).

    Step by step on (S, B, .) slices that stay in cache: passes over whole (T, S, B, 4H) tensors are memory-bound
    and cost more than the per-step operations they would save.
    """
    steps, seeds, batch, gates_width = acts.shape
    H = gates_width // 4
    g_gates = torch.empty_like(acts)
    g_w_hh = torch.zeros_like(w_hh)
    g_h = acts.new_empty((seeds, batch, H))
    g_cell = acts.new_zeros((seeds, batch, H))  # adjoint of c_t, carried back through f_{t+1}
    through = torch.empty_like(g_h)
    slope = acts.new_empty((seeds, batch, gates_width))
    ones = acts.new_ones((seeds, batch, H))
    zeros = acts.new_zeros((seeds, batch, H))
    for step in range(steps):
        t = steps - 1 - step
        a = acts[t]
        tc = tanh_cells[t]
        i = a[:, :, :H]
        g = a[:, :, 2 * H : 3 * H]
        o = a[:, :, 3 * H :]
        c_prev = cells[t - 1] if t > 0 else zeros
        if t == steps - 1:
            g_h.copy_(g_hidden[t])
        else:
            torch.baddbmm(g_hidden[t], g_gates[t + 1], w_hh, out=g_h)
            g_cell.mul_(acts[t + 1][:, :, H : 2 * H])
        torch.addcmul(ones, tc, tc, value=-1, out=through)  # d h_t / d c_t = o (1 - tanh^2 c_t)
        through.mul_(o)
        g_cell.addcmul_(g_h, through)
        torch.addcmul(a, a, a, value=-1, out=slope)  # sigmoid' = s (1 - s); tanh' = 1 - g^2 for the g gate
        torch.addcmul(ones, g, g, value=-1, out=slope[:, :, 2 * H : 3 * H])
        dg = g_gates[t]
        torch.mul(g_cell, g, out=dg[:, :, :H])  # c_t = f c_{t-1} + i g; h_t = o tanh(c_t)
        torch.mul(g_cell, c_prev, out=dg[:, :, H : 2 * H])
        torch.mul(g_cell, i, out=dg[:, :, 2 * H : 3 * H])
        torch.mul(g_h, tc, out=dg[:, :, 3 * H :])
        dg.mul_(slope)
        if t > 0:
            g_w_hh.baddbmm_(dg.transpose(1, 2), hidden[t - 1])
    return g_gates, g_w_hh


_STEPS: list[Callable[..., Any]] = []


def _steps() -> list[Callable[..., Any]]:
    """The two loops, compiled by TorchScript where it is available (about twice less overhead per operation than
    the Python interpreter); the plain Python functions otherwise. Same operations, same results."""
    if not _STEPS:
        try:
            with warnings.catch_warnings():  # deprecated in favour of torch.compile, which does not fit a T-step loop
                warnings.simplefilter("ignore", DeprecationWarning)
                _STEPS.extend([torch.jit.script(_lstm_forward_steps), torch.jit.script(_lstm_backward_steps)])
        except Exception:  # noqa: BLE001 - TorchScript missing or unable to compile: the Python loops do the same
            _STEPS.extend([_lstm_forward_steps, _lstm_backward_steps])
    return _STEPS


# ------------------------------------------------------------------------------------------------------------------
class SeedStack(nn.Module):
    """S :class:`AffectModel` s of one configuration as one module whose tensors carry a leading seed dimension.

    ``stacked[name]`` has shape `(S, *shape)` for each parameter and buffer ``name`` of an AffectModel. The forward
    pass is split where the model stops being causal: :meth:`causal` (front-end and filter, any padding after the
    end of a sequence leaves the earlier frames unchanged) and :meth:`finish` (the baseline's smoothing and the
    alignment, applied per seed to sequences cropped to their true length).
    """

    def __init__(self, models: list[AffectModel]) -> None:
        super().__init__()
        if not models:
            raise AffectError("seed stack: no models")
        self.template = copy.deepcopy(models[0])  # structure and the parameter-free layers; its tensors are unused
        self.seeds = len(models)
        params, buffers = stack_module_state(models)
        self.names = list(params) + list(buffers)
        for name, value in params.items():
            self.register_parameter(_slot(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_slot(name), value.detach().clone())
        config = models[0].config
        self.layers = len(config.hidden_sizes)
        self.lstm_size = config.lstm_size

    # ------------------------------------------------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        """The stacked parameter or buffer ``name`` (AffectModel naming), shape `(S, ...)`."""
        return getattr(self, _slot(name))

    def named_stacked(self) -> list[tuple[str, Tensor]]:
        return [(name, self.tensor(name)) for name in self.names]

    def alignment_parameters(self) -> list[nn.Parameter]:
        """The stacked parameters that get the alignment learning rate (mu', s of adaptive alignment)."""
        if not isinstance(self.template.alignment, AdaptiveAlignment):
            return []
        return [p for name, p in self.named_parameters() if name.startswith("alignment__")]

    def seed_state(self, seed_index: int) -> dict[str, Tensor]:
        """The state dict of seed ``seed_index`` as an AffectModel's (cloned, detached)."""
        return {name: value[seed_index].detach().clone() for name, value in self.named_stacked()}

    def load_seed_state(self, seed_index: int, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in self.named_stacked():
                value[seed_index].copy_(state[name])

    def unstack(self) -> list[AffectModel]:
        """S ordinary AffectModels with the stack's current weights."""
        models = []
        for s in range(self.seeds):
            model = copy.deepcopy(self.template)
            model.load_state_dict(self.seed_state(s))
            models.append(model)
        return models

    # ------------------------------------------------------------------------------------------------------------
    def causal(self, x: Tensor, seeds: list[int] | None = None) -> tuple[Tensor, list[Tensor | None]]:
        """Front-end of every seed, then the filter of each seed in ``seeds`` (default: all).

        Args:
            x: Features with NaN rows for frames without a face. Shape should be `(B, T, d)` (the same input for
                every seed) or `(S, B, T, d)` (one input per seed).
            seeds: Indices of the seeds whose filter runs; the others get None.

        Returns:
            Observations o_t, shape `(S, B, T, n)`, and per seed the filtered states z_t `(B, T, n)` (for the
            baseline: the observations, smoothed later by :meth:`finish`) or None.
        """
        config = self.template.config
        if x.dim() not in (3, 4) or x.shape[-1] != config.input_dim:
            raise AffectError(f"seed stack input: expected (B, T, {config.input_dim}) or (S, B, T, ...), got {x.shape}")
        observed = finite_rows(x)
        everything_observed = bool(observed.all())  # as AffectModel.forward: no masking, shared covariances
        if not everything_observed:
            x = x.masked_fill(~observed.unsqueeze(-1), 0.0)  # one pass, no zero tensor
        o = self._frontend(x, None if everything_observed else observed)
        if x.dim() == 3:
            observed = observed.expand(self.seeds, *observed.shape)
        seeds = list(range(self.seeds)) if seeds is None else seeds
        states: list[Tensor | None] = [None] * self.seeds
        for s in seeds:
            if self.template.filter is None:
                states[s] = o[s]
            else:
                mask = None if everything_observed else observed[s]
                out = functional_call(self.template.filter, self._slice("filter.", s), (o[s],), {"mask": mask})
                states[s] = out.states
        return o, states

    def finish(self, seed_index: int, z: Tensor) -> Tensor:
        """The baseline's smoothing and the alignment of seed ``seed_index``: z `(B, T, n)` -> y `(B, T, n)`."""
        if self.template.smoothing is not None:
            z = self.template.smoothing(z)
        alignment = self.template.alignment
        if alignment is None:
            return z
        if isinstance(alignment, AdaptiveAlignment):
            return functional_call(alignment, self._slice("alignment.", seed_index), (z,))
        return alignment(z)

    def forward(self, x: Tensor) -> Tensor:
        """y of every seed for whole sequences: x `(B, T, d)` or `(S, B, T, d)` -> `(S, B, T, n)`."""
        _, states = self.causal(x)
        return torch.stack([self.finish(s, z) for s, z in enumerate(states) if z is not None])

    def _slice(self, prefix: str, seed_index: int) -> dict[str, Tensor]:
        return {
            name[len(prefix) :]: value[seed_index] for name, value in self.named_stacked() if name.startswith(prefix)
        }

    def _frontend(self, x: Tensor, observed: Tensor | None) -> Tensor:
        """[x, mask] -> FF + ReLU layers -> LSTM -> FC + tanh, every seed at once. Returns `(S, B, T, n)`.

        observed: (B, T) or (S, B, T) bool, or None when every frame is observed. The activations of S seeds are
        large and every pass over them is memory-bound, so the feed-forward layers run "transposed", as
        (S, width, B*T) products whose operands need no copies: with one input for every seed (x of shape
        (B, T, d)) the first layer of all seeds is one matrix product (S*out, d+2) x (d+2, B*T), its bias a column
        of ones appended to [x, mask]. On the CPU the LSTM's input projection and biases run inside its compiled
        recurrence (`FusedSeedLSTM`)."""
        S = self.seeds
        batch, steps = x.shape[-3], x.shape[-2]
        rows = batch * steps
        column = x.new_ones(x.shape[:-1]) if observed is None else observed.to(x.dtype).expand(x.shape[:-1])
        ones = x.new_ones(x.shape[:-1] + (1,))
        h = torch.cat([x, column.unsqueeze(-1), ones], dim=-1).reshape(*x.shape[:-3], rows, x.shape[-1] + 2)
        if self.layers == 0:  # the LSTM reads [x, mask] directly: (S, B*T, d+1)
            h = h[..., :-1].expand(S, rows, x.shape[-1] + 1)
        for j in range(self.layers):
            weight = self.tensor(f"frontend.feed_forward.{2 * j}.weight")  # (S, out, in)
            bias = self.tensor(f"frontend.feed_forward.{2 * j}.bias")  # (S, out)
            if j == 0:
                weight = torch.cat([weight, bias.unsqueeze(-1)], dim=-1)  # (S, out, d+2): bias times the ones
                if h.dim() == 2:  # shared input (ReLU in place before the view: on the view autograd would copy)
                    h = torch.relu_(torch.mm(weight.reshape(-1, weight.shape[-1]), h.T)).view(S, -1, rows)
                else:
                    h = torch.relu_(torch.bmm(weight, h.mT))  # (S, out, B*T)
            else:
                h = torch.relu_(torch.baddbmm(bias.unsqueeze(-1), weight, h))
        w_ih = self.tensor("frontend.lstm.weight_ih_l0")  # (S, 4H, in)
        w_hh = self.tensor("frontend.lstm.weight_hh_l0")
        lstm_bias = self.tensor("frontend.lstm.bias_ih_l0") + self.tensor("frontend.lstm.bias_hh_l0")
        if self.layers == 0:
            h = h.mT  # (S, in, B*T) like the layers' outputs
        if _compiled_applies(h):
            hidden = FusedSeedLSTM.apply(h.contiguous(), w_ih, w_hh, lstm_bias, batch, torch.is_grad_enabled())
        else:
            xw = torch.bmm(h.mT, w_ih.mT).view(S, batch, steps, -1)  # (S, B, T, 4H)
            hidden = SeedLSTMRecurrence.apply(xw, w_hh, lstm_bias, torch.is_grad_enabled())  # (S, B, T, H)
        hidden = hidden.reshape(S, rows, self.lstm_size)
        head_w, head_b = self.tensor("frontend.head.weight"), self.tensor("frontend.head.bias")
        o = torch.tanh(torch.baddbmm(head_b.unsqueeze(1), hidden, head_w.mT))
        return o.view(S, batch, steps, -1)


def _slot(name: str) -> str:
    return name.replace(".", "__")


# ------------------------------------------------------------------------------------------------------------------
class _EvalSet:
    """A split's labelled videos, transformed once, grouped by length (for :func:`evaluate_stack`)."""

    def __init__(self, videos: list[Video], transform: FeatureTransform, dimensions: tuple[str, ...]) -> None:
        self.dimensions = dimensions
        by_length: dict[int, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {}
        for video in videos:
            if not video.labelled:
                continue
            golds = {}
            for dim in dimensions:
                gold = video.labels(dim)
                if gold is not None and np.isfinite(gold).any():
                    golds[dim] = gold
            by_length.setdefault(video.num_frames, []).append((transform.apply(video.features), golds))
        self.groups = [
            (torch.from_numpy(np.stack([x for x, _ in items])), [golds for _, golds in items])
            for items in by_length.values()
        ]


@torch.no_grad()
def evaluate_stack(stack: SeedStack, videos: _EvalSet, seeds: list[int]) -> dict[int, dict[str, dict[str, float]]]:
    """Per seed in ``seeds``: the metrics :func:`affect_core.inference.evaluate_videos` gives for that seed's model.

    Each video is still a sequence of its own (filters and alignment never mix rows); videos of equal length share a
    forward pass of the stack.
    """
    was_training = stack.training
    stack.eval()
    per_seed: dict[int, dict[str, list[dict[str, float]]]] = {s: {d: [] for d in videos.dimensions} for s in seeds}
    for x, golds in videos.groups:
        _, states = stack.causal(x, seeds)
        # The smoothing and alignment act channel by channel: only the level channels are needed.
        levels = np.stack([stack.finish(s, states[s][..., 0::3]).numpy() for s in seeds])  # (S', V, T, k)
        for j, dim in enumerate(videos.dimensions):
            rows = [v for v, gold_by_dim in enumerate(golds) if dim in gold_by_dim]
            if not rows:
                continue
            gold = np.stack([golds[v][dim] for v in rows])  # (V', T)
            table = metrics_table(levels[..., j][:, rows], gold)  # every seed and video at once: (S', V')
            for i, s in enumerate(seeds):
                per_seed[s][dim].extend(
                    {name: float(value[i, r]) for name, value in table.items()} for r in range(len(rows))
                )
    stack.train(was_training)
    return {s: {dim: average_over_sequences(rows) for dim, rows in per_dim.items()} for s, per_dim in per_seed.items()}


def clip_grad_norm_per_seed(parameters: list[nn.Parameter], max_norm: float) -> Tensor:
    """:func:`torch.nn.utils.clip_grad_norm_` for each seed of stacked parameters (seed = dim 0) on its own.

    Returns the per-seed total norms before clipping, shape `(S,)`.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = torch.stack([g.reshape(g.shape[0], -1).square().sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    coefficients = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficients.view(-1, *([1] * (g.dim() - 1))))
    return norms


def _mean_ccc(metrics: dict[str, dict[str, float]]) -> float:
    values = [m["ccc"] for m in metrics.values() if np.isfinite(m["ccc"])]
    return float(np.mean(values)) if values else -math.inf


def _stack_seed_batches(batches: list[Batch]) -> tuple[Tensor, list[int]]:
    """Per-seed batches (same B, lengths may differ) -> x `(S, B, T_max, d)` padded with NaN, and each T."""
    lengths = [b.x.shape[1] for b in batches]
    longest = max(lengths)
    xs = []
    for b in batches:
        pad = longest - b.x.shape[1]
        xs.append(b.x if pad == 0 else torch.cat([b.x, b.x.new_full((b.x.shape[0], pad, b.x.shape[2]), math.nan)], 1))
    return torch.stack(xs), lengths


def train_seeds_batched(
    train: list[Video],
    dev: list[Video],
    config: RunConfig,
    seeds: list[int],
    *,
    progress: bool = False,
    on_epoch: SeedEpochCallback | None = None,
) -> list[TrainResult]:
    """Train one model per seed in ``seeds`` as one stack; each result equals ``train_model`` with that seed.

    Equal means: the same initial weights, windows, Adam updates, per-seed gradient clipping, per-seed early stopping
    on the mean dev CCC and the same metrics, up to float summation order (see the module docstring). ``config`` is
    used for every seed with ``train.seed`` replaced.

    on_epoch: called after each epoch of each seed that is still training, with (seed, record).
    Each result's ``train_seconds`` (and each record's ``seconds``) is the stack's wall time divided by the number of
    seeds it trained at that moment, so that per-seed figures stay comparable with one-by-one training.
    """
    started = time.perf_counter()
    if not seeds:
        raise AffectError("training: no seeds given")
    if len(set(seeds)) != len(seeds):
        raise AffectError(f"training: seeds must be distinct, got {seeds}")
    base = copy.deepcopy(config)
    dims = base.model.affect_dimensions
    transform, train_items, fps = prepare_training(train, base)
    configs, models, rngs = [], [], []
    for seed in seeds:
        seed_config = copy.deepcopy(base)
        seed_config.train.seed = int(seed)
        torch.manual_seed(seed)  # as train_model: the seed's initial weights
        models.append(AffectModel(seed_config.model))
        configs.append(seed_config)
        rngs.append(np.random.default_rng(seed))
    S = len(seeds)
    stack = SeedStack(models)
    hp = base.train
    align_ids = {id(p) for p in stack.alignment_parameters()}
    groups = [{"params": [p for p in stack.parameters() if id(p) not in align_ids], "lr": hp.lr}]
    if align_ids:
        groups.append({"params": stack.alignment_parameters(), "lr": hp.lr_align})
    optimizer = torch.optim.Adam(groups, betas=hp.betas)
    parameters = list(stack.parameters())

    epochs, bad_epochs, best_epoch = [0] * S, [0] * S, [0] * S
    best_score = [-math.inf] * S
    best_state = [stack.seed_state(s) for s in range(S)]
    frozen: dict[int, dict[str, Tensor]] = {}
    histories: list[list[EpochRecord]] = [[] for _ in range(S)]
    shared_batches = [pad_batch(train_items)] if hp.window_frames is None else None
    dev_set = _EvalSet(dev, transform, dims) if dev else None

    def is_active(s: int) -> bool:
        return epochs[s] < hp.max_epochs and bad_epochs[s] < hp.patience

    bar = tqdm(total=hp.max_epochs, disable=not progress, desc=f"epochs ({S} seeds)", leave=False)
    active = [s for s in range(S) if is_active(s)]
    while active:
        t0 = time.perf_counter()
        stack.train()
        losses: dict[int, list[float]] = {s: [] for s in active}
        if shared_batches is not None:
            steps = [(b.x, [b.labels] * S, [b.x.shape[1]] * S) for b in shared_batches]
        else:
            per_seed = {s: epoch_batches(train_items, hp.window_frames, hp.batch_size, rngs[s]) for s in active}
            steps = []
            for j in range(len(per_seed[active[0]])):
                # A seed that has stopped draws no windows; it gets a copy of an active seed's batch (output unused).
                batches = [per_seed[s][j] if s in per_seed else per_seed[active[0]][j] for s in range(S)]
                x, lengths = _stack_seed_batches(batches)
                steps.append((x, [b.labels for b in batches], lengths))
        for x, labels, lengths in steps:
            optimizer.zero_grad()
            _, states = stack.causal(x, active)
            total = None
            for s in active:
                y = stack.finish(s, states[s][:, : lengths[s]])
                loss = affect_loss(y, labels[s], fps=fps, lambda1=hp.lambda1, lambda2=hp.lambda2)
                if not torch.isfinite(loss):
                    raise AffectError(
                        f"training: the loss of seed {seeds[s]} became {float(loss)} at epoch {epochs[s] + 1}"
                    )
                losses[s].append(float(loss.detach()))
                total = loss if total is None else total + loss
            assert total is not None
            total.backward()
            clip_grad_norm_per_seed(parameters, hp.grad_clip)
            optimizer.step()
            if frozen:
                for s, state in frozen.items():
                    stack.load_seed_state(s, state)
        scores = evaluate_stack(stack, dev_set, active) if dev_set is not None else {}
        seconds = (time.perf_counter() - t0) / len(active)
        for s in active:
            epochs[s] += 1
            dev_score = _mean_ccc(scores[s]) if dev_set is not None else -float(np.mean(losses[s]))
            if dev_score > best_score[s]:
                best_score[s], best_epoch[s], bad_epochs[s] = dev_score, epochs[s], 0
                best_state[s] = stack.seed_state(s)
            else:
                bad_epochs[s] += 1
            record = EpochRecord(epochs[s], float(np.mean(losses[s])), dev_score, seconds)
            histories[s].append(record)
            if on_epoch is not None:
                on_epoch(seeds[s], record)
            if not is_active(s):
                frozen[s] = stack.seed_state(s)
        active = [s for s in active if is_active(s)]
        bar.update(max(epochs) - bar.n)
    bar.close()

    for s in range(S):
        stack.load_seed_state(s, best_state[s])
    train_metrics = evaluate_stack(stack, _EvalSet(train, transform, dims), list(range(S)))
    dev_metrics = evaluate_stack(stack, dev_set, list(range(S))) if dev_set is not None else {}
    results = []
    seconds = (time.perf_counter() - started) / S
    for s, model in enumerate(models):
        model.load_state_dict(best_state[s])
        model.eval()
        metrics = {"train": train_metrics[s]}
        if dev_set is not None:
            metrics["dev"] = dev_metrics[s]
        mu, sigma2 = model.learned_lag()
        results.append(
            TrainResult(
                model=model,
                transform=transform,
                config=configs[s],
                metrics=metrics,
                mu_frames=mu,
                sigma2=sigma2,
                epochs=epochs[s],
                best_epoch=best_epoch[s],
                train_seconds=seconds,
                history=histories[s],
            )
        )
    return results


# ------------------------------------------------------------------------------------------------------------------
def run_seeds_batched(
    tasks: list[SeedTask],
    corpus: Corpus,
    run_url: str,
    *,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[SeedTask, EpochRecord], None] | None = None,
    storage_options: dict[str, Any] | None = None,
    node: str | None = None,
) -> list[SeedOutcome]:
    """:func:`affect_core.experiment.run_seed` for a group of seeds in one process: the seeds of each model (tasks
    with the same name and configuration apart from the seed) train as one stack (:func:`train_seeds_batched`).

    Writes the same per-seed bundles and rows as ``run_seed``. With ``resume``, seeds that finished under
    ``run_url`` are not trained again; the others start from scratch (a stack keeps no mid-training checkpoint).
    Returns one outcome per task, in the order of ``tasks``.
    """
    outcomes: dict[int, SeedOutcome] = {}
    groups: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        select_model_features(task, corpus)
        if resume:
            done = load_seed_outcome(task, run_url, storage_options)
            if done is not None:
                outcomes[index] = done
                continue
        variant = copy.deepcopy(task.config)
        variant.train.seed = 0
        groups.setdefault(task.name + "\n" + config_json(variant), []).append(index)
    train, dev = corpus.split("train"), corpus.split("dev")
    for indices in groups.values():
        group = [tasks[i] for i in indices]
        results = train_seeds_batched(
            train, dev, group[0].config, [t.seed for t in group], progress=progress, on_epoch=_per_task(group, on_epoch)
        )
        for index, task, result in zip(indices, group, results, strict=True):
            outcomes[index] = save_seed_outcome(
                task, result, corpus, run_url, storage_options=storage_options, node=node
            )
    return [outcomes[i] for i in range(len(tasks))]


def _per_task(
    group: list[SeedTask], on_epoch: Callable[[SeedTask, EpochRecord], None] | None
) -> SeedEpochCallback | None:
    if on_epoch is None:
        return None
    by_seed = {t.seed: t for t in group}
    return lambda seed, record: on_epoch(by_seed[seed], record)
