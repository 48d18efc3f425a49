"""The LSTM-BF-AA model family (paper section III), readable top to bottom.

    features x_t (NaN row = no face)
      -> causal stages, carrying their state across pieces of a sequence (:meth:`AffectModel.causal`):
         front-end: [x_t, mask_t] -> FF(29)+ReLU -> FF(16)+ReLU -> LSTM(16) -> FC(m)+tanh = observation o_t
         filter: lstm-kf = Kalman filter; lstm-ekf = extended Kalman filter (a frame without a face is a predict-only
         step); baseline: none
      -> non-causal stages, channel by channel (:meth:`AffectModel.noncausal`):
         the baseline's fixed Gaussian smoothing, then alignment: none | manual (fixed delay) | adaptive (learnable
         Gaussian, mu and sigma^2)
      -> output map (:func:`output_map`): the levels clamped to [-1, 1], the labels' range
      -> y_t = [level, d level, d2 level] per affect dimension

One configuration (:class:`affect_core.config.ModelConfig`) selects every variant of the paper's Tables I-III.

A model holds S seeds of one configuration along a leading seed dimension (S = 1 for one trained model): every
parameter is stacked along it. The front-end runs one batched product per layer for every seed; the filter and the
alignment run seed by seed on their slices (:class:`SeedStack`), so that gradient clipping, Adam and the best-state
copies walk one tensor per parameter name whatever S. Seeds never interact, so training S seeds together equals
training each alone. Every path
(training, evaluation, batched scoring, streaming) goes through :meth:`causal` and :meth:`noncausal`; the compiled
kernels sit behind the front-end (`affect_core.frontend.lstm_hidden`) and the filters (`method`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from affect_core.alignment import AdaptiveAlignment, FixedGaussianSmoothing, FixedShift
from affect_core.config import ModelConfig
from affect_core.errors import AffectError
from affect_core.frontend import FrontEnd, LSTMState
from affect_core.rater_alignment import RaterAlignments

FilterState = tuple[Tensor, Tensor]
"""A filter's last (z `(n,)`, P `(n, n)`) of one sequence."""


@dataclass
class CausalState:
    """What the causal stages carry from one piece of a sequence to the next: the LSTM's (h, c) and, per seed, the
    filter's last (z, P) (one sequence per batch)."""

    lstm: LSTMState
    filters: list[FilterState | None]


@dataclass
class CausalOutput:
    """The causal stages' outputs for the seeds asked for (None for the others).

    observations: (S, B, T, n) the front-end's o_t, every seed.
    states: per seed (B, T, n) the filtered states z_t (the baseline: its observations).
    covariances: per seed (B, T, n, n) the filter's P_t, or None (baseline); may be an expanded (stride-0 batch) view
        when the sequences share one covariance recursion.
    state: what the next piece of the same sequences starts from.
    """

    observations: Tensor
    states: list[Tensor | None]
    covariances: list[Tensor | None]
    state: CausalState


@dataclass
class ModelOutput:
    """Per-frame outputs of a one-seed model. B sequences, T frames, n = 3 x affect dimensions.

    y: (B, T, n) aligned prediction (level, first and second derivative per dimension), the levels through
        :func:`output_map` (in [-1, 1]).
    z: (B, T, n) filtered state (for the baseline: the observation before smoothing).
    P: (B, T, n, n) filter covariance, or None for the baseline (no filter).
    y_var: (B, T, k) variance of each aligned level (the alignment applied to P's level diagonal), or None;
        computed on first access (training never reads it).
    observations: (B, T, n) the front-end's observations o_t.
    """

    y: Tensor
    z: Tensor
    P: Tensor | None
    observations: Tensor
    _model: AffectModel | None = field(default=None, repr=False)
    _y_var: Tensor | None = field(default=None, repr=False)

    @property
    def y_var(self) -> Tensor | None:
        if self._y_var is None and self.P is not None and self._model is not None:
            self._y_var = self._model.noncausal(level_variances(self.P))
        return self._y_var

    def levels(self) -> Tensor:
        """(B, T, k): the predicted level of each affect dimension."""
        return self.y[..., 0::3]


def output_map(levels: Tensor) -> Tensor:
    """The model's last stage: aligned levels -> predictions in [-1, 1], the labels' range, on every path (training,
    evaluation, batched scoring, streaming). A clamp (hardtanh): the identity inside the range, so a prediction in it
    is the paper's; NaN stays NaN (it is reported, never hidden). levels: any shape."""
    return F.hardtanh(levels)


def bounded_state(y: Tensor) -> Tensor:
    """y (..., 3k) [level, d level, d2 level] per affect dimension with :func:`output_map` applied to the levels; the
    derivative channels pass unchanged. Any multiple of 3 channels (several targets side by side) works alike."""
    return _BoundedLevels.apply(y)


class _BoundedLevels(torch.autograd.Function):
    """:func:`output_map` (hardtanh) on every third channel, the others unchanged, in one copy each way: what
    slicing the levels out, mapping them and concatenating again computes, and its gradient (hardtanh's: zero where
    the level is at or beyond a bound), without the slices' zero-filled gradients. The backward is made of
    differentiable operations."""

    @staticmethod
    def forward(ctx, y: Tensor) -> Tensor:  # type: ignore[override]
        out = y.clone()
        out[..., 0::3] = output_map(out[..., 0::3])
        ctx.save_for_backward(y)
        return out

    @staticmethod
    def backward(ctx, g_out: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        levels = y[..., 0::3]
        g_y = g_out.clone()
        g_y[..., 0::3] = g_y[..., 0::3].masked_fill((levels <= -1.0) | (levels >= 1.0), 0.0)
        return g_y


def first_nonfinite(values: Tensor) -> Tensor:
    """(B,) int64: per sequence of ``values`` (B, T, ...), the first frame holding a NaN or an infinity, -1 where there
    is none. Computed on the values' device without waiting for it (read it with the results)."""
    bad = ~torch.isfinite(values.flatten(2)).all(-1)
    return torch.where(bad.any(-1), bad.to(torch.int32).argmax(-1).to(torch.int64), -1)


def nonfinite_error(where: str, frame: int) -> AffectError:
    """The error of a model whose state (or prediction) stopped being a number: names where and the first frame."""
    return AffectError(
        f"{where}: the model's state is not finite (NaN or infinite) from frame {frame} on; its predictions there would"
        " be meaningless (a diverged filter or non-finite weights)"
    )


def level_variances(P: Tensor) -> Tensor:
    """(..., T, k) the variances of the level components of covariances P (..., T, n, n)."""
    return torch.diagonal(P, dim1=-2, dim2=-1)[..., 0::3]


def host_finite_rows(x: np.ndarray) -> np.ndarray:
    """(..., T) bool: True where every feature of the frame is finite; x (..., T, d) on the host. Knowing this before
    the data reaches the model's device spares the device a check and the host a synchronisation."""
    finite = np.isfinite(x.sum(-1))
    if not finite.all():
        suspect = ~finite
        finite[suspect] = np.isfinite(x[suspect]).all(-1)
    return finite


def host_face_rows(x: np.ndarray) -> np.ndarray | None:
    """Prepare features on the host for ``AffectModel.causal(checked=True)``: the frames with a face (every feature
    finite), as a (..., T) bool mask, or None when every frame has one; the other frames' rows of ``x`` (..., T, d)
    are set to zeros in place. Done once where a batch is made, the model's pass then neither checks nor copies the
    features (a pass over the whole input saved in every training step)."""
    observed = host_finite_rows(x)
    if observed.all():
        return None
    x[~observed] = 0.0
    return observed


def finite_rows(x: Tensor) -> Tensor:
    """(..., T) bool: True where every feature of the frame is finite. x: (..., T, d).

    A row sum is finite for almost every row, and then the row is finite; only rows whose sum is not (a NaN or an
    infinity in the row, or finite values overflowing the sum) are checked feature by feature. One pass over x
    instead of the several temporaries of `isfinite(x).all(-1)`.
    """
    finite = torch.isfinite(x.sum(-1))
    if not bool(finite.all()):
        suspect = ~finite
        finite[suspect] = torch.isfinite(x[suspect]).all(-1)
    return finite


class SeedStack(nn.Module):
    """S modules of one kind (S filters, S alignments) as one module: each parameter and buffer stacked along a
    leading seed axis, shape `(S, *shape in the module)`.

    Why: with one module per seed, gradient clipping, Adam and the best-state copies walk one small tensor per seed and
    parameter (about 70 for ten seeds); stacked they walk one per parameter name, whatever S. Seed s runs the module's
    own code on its slices (``torch.func.functional_call``), so its maths is the module's, unchanged, and its
    gradients land in row s of the stacked parameters.

    The state dict keeps the layout of the ``nn.ModuleList`` of one module per seed that this replaced: keys
    ``{s}.{name}`` with the module's own shapes, so bundles and checkpoints read and write as before.

    modules: the seeds' modules, each built as a one-seed model builds it (same class and settings, no submodules);
    the first one's code serves every seed, its own tensors are never read.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        template = modules[0]
        if any(True for _ in template.children()):
            raise AffectError(f"seed stack: {type(template).__name__} has submodules; only flat modules stack")
        self.seeds = len(modules)
        self._template = [template]  # kept out of the registry: not part of the model's parameters or state
        for name, _ in template.named_parameters():
            self.register_parameter(name, nn.Parameter(torch.stack([m.get_parameter(name).detach() for m in modules])))
        for name, _ in template.named_buffers():
            persistent = name not in template._non_persistent_buffers_set
            stacked = torch.stack([m.get_buffer(name) for m in modules])
            self.register_buffer(name, stacked, persistent=persistent)

    @property
    def template(self) -> nn.Module:
        """The module whose code every seed runs (its class and settings; its own tensors unused)."""
        return self._template[0]

    def __len__(self) -> int:
        return self.seeds

    def stacked(self) -> Iterator[tuple[str, Tensor]]:
        """(name, stacked tensor `(S, ...)`) of every parameter, then every buffer."""
        yield from self._parameters.items()  # type: ignore[misc]
        yield from self._buffers.items()  # type: ignore[misc]

    def _persistent(self) -> Iterator[tuple[str, Tensor]]:
        return ((name, value) for name, value in self.stacked() if name not in self._non_persistent_buffers_set)

    def forward(self, seed: int, *args: Any, **kwargs: Any) -> Any:
        """The module's forward for seed ``seed``: its code on the seed's slices (row ``seed`` of each tensor)."""
        return functional_call(self.template, {name: value[seed] for name, value in self.stacked()}, args, kwargs)

    def seed_module(self, seed: int) -> nn.Module:
        """A standalone module holding a copy of seed ``seed``'s tensors (to read its values or run it alone)."""
        single = copy.deepcopy(self.template)
        for name, value in self.stacked():
            part = value[seed].detach().clone()
            setattr(single, name, nn.Parameter(part) if name in self._parameters else part)
        return single

    __getitem__ = seed_module

    def seed_state(self, seed: int, prefix: str = "") -> dict[str, Tensor]:
        """Seed ``seed``'s persistent tensors as one module's state dict (detached copies), keys prefixed."""
        return {f"{prefix}{name}": value[seed].detach().clone() for name, value in self._persistent()}

    def load_seed_state(self, seed: int, state: dict[str, Tensor], prefix: str = "") -> None:
        """Row ``seed`` of every tensor set from one module's state dict (keys prefixed as :meth:`seed_state` gives)."""
        with torch.no_grad():
            for name, value in self._persistent():
                value[seed].copy_(state[f"{prefix}{name}"])

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        # Seed-major keys {s}.{name}, the layout of one module per seed. Copies, not views: every key owns its memory
        # (safetensors refuses tensors that share it).
        for seed in range(self.seeds):
            for name, value in self._persistent():
                destination[f"{prefix}{seed}.{name}"] = value[seed] if keep_vars else value[seed].detach().clone()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        expected = set()
        with torch.no_grad():
            for seed in range(self.seeds):
                for name, value in self._persistent():
                    key = f"{prefix}{seed}.{name}"
                    expected.add(key)
                    if key not in state_dict:
                        missing_keys.append(key)
                        continue
                    given = state_dict[key]
                    if given.shape != value.shape[1:]:
                        error_msgs.append(
                            f"size mismatch for {key}: copying a param with shape {tuple(given.shape)} from "
                            f"checkpoint, the shape in current model is {tuple(value.shape[1:])}."
                        )
                        continue
                    value[seed].copy_(given)
        if strict:
            unexpected_keys.extend(key for key in state_dict if key.startswith(prefix) and key not in expected)


class AffectModel(nn.Module):
    """LSTM + Bayesian filter + alignment for S seeds. See the module docstring for the data flow.

    seeds: the seeds whose initial weights to draw (``torch.manual_seed(seed)`` before each seed's layers); None for
    one model drawn from the current random state (weights about to be loaded).
    """

    def __init__(self, config: ModelConfig, seeds: list[int] | None = None) -> None:
        super().__init__()
        if config.input_dim <= 0:
            raise AffectError(f"model config: input_dim must be positive, got {config.input_dim}")
        self.config = config
        k = config.num_dims
        self.state_dim = 3 * k
        draws: list[int | None] = list(seeds) if seeds else [None]
        # Learned observation noise: the head also emits each frame's noise offsets u_t, one per observation channel.
        noise_dim = self.state_dim if config.observation_noise == "learned" else 0
        self.frontend = FrontEnd(
            config.input_dim, config.hidden_sizes, config.lstm_size, self.state_dim, draws, noise_dim=noise_dim
        )
        # Not registered when absent (a plain None): a state dict with such keys is then refused, as it was before.
        self.filters = SeedStack([self._new_filter(config) for _ in draws]) if config.model != "baseline" else None
        self.smoothing = FixedGaussianSmoothing(config.smooth_sigma) if config.model == "baseline" else None
        self.alignments = SeedStack([self._new_alignment(config) for _ in draws]) if config.align != "none" else None

    @staticmethod
    def _new_filter(config: ModelConfig) -> nn.Module:
        import affect_core.filters as filters

        kind = filters.KalmanFilter if config.model == "lstm-kf" else filters.ExtendedKalmanFilter
        return kind(
            num_dims=config.num_dims,
            fps=config.fps,
            q_init=config.q_init,
            r_init=config.r_init,
            p0=config.p0,
            method=config.filter_method,
        )

    @staticmethod
    def _new_alignment(config: ModelConfig) -> nn.Module:
        if config.align == "adaptive" and config.raters:
            return RaterAlignments(
                config.raters, window=config.window, mu_init=config.mu_init_frames, sigma2_init=config.sigma2_init
            )
        if config.align == "adaptive":
            return AdaptiveAlignment(
                window=config.window, mu_init=config.mu_init_frames, sigma2_init=config.sigma2_init
            )
        return FixedShift(config.manual_shift or 0)

    @property
    def seeds(self) -> int:
        return self.frontend.seeds

    # ------------------------------------------------------------------------------------------------------------
    def causal(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        state: CausalState | None = None,
        seeds: list[int] | None = None,
        checked: bool = False,
    ) -> CausalOutput:
        """Front-end and filter: the stages whose output at frame t depends on frames up to t only.

        Args:
            x: Features, NaN rows for frames without a face. Shape should be `(B, T, d)` (the same input for every
                seed) or `(S, B, T, d)` (one input per seed).
            mask: Optional bool `(B, T)` (or `(S, B, T)`), True = observed; False frames count as frames without a face.
            state: The state after the previous piece of the same sequences (one sequence per batch when a filter
                carries it), or None at the sequences' start.
            seeds: Indices of the seeds whose filter runs (default: all); the others get None.
            checked: The caller found the frames with a face on the host (:func:`host_face_rows`): ``mask`` is
                exactly them (None: every frame has one) and ``x`` holds zeros on the others, so the model neither
                checks nor cleans the features and does not wait for the device (no host synchronisation: training
                and scoring pass it).
        """
        if x.dim() not in (3, 4) or x.shape[-1] != self.config.input_dim:
            raise AffectError(
                f"model input: expected shape (B, T, {self.config.input_dim}) or (S, B, T, ...), got {tuple(x.shape)}"
            )
        if checked:
            everything_observed = mask is None
            observed = x.new_ones(x.shape[:-1], dtype=torch.bool) if mask is None else mask
        else:
            observed = finite_rows(x)
            if mask is not None:
                observed = observed & mask.to(observed.device)
            # One check per call (not per frame): a batch with every frame observed skips the masking and lets the
            # Kalman filter share one covariance recursion across the batch.
            everything_observed = bool(observed.all())
            if not everything_observed:
                x = x.masked_fill(~observed.unsqueeze(-1), 0.0)  # one pass, no zero tensor
        o, lstm_state = self.frontend(
            x, None if everything_observed else observed, None if state is None else state.lstm
        )
        offsets = None
        if self.frontend.noise_dim:  # [o_t, u_t]: frame t's noise R_t = diag(softplus(r + u_t)) for the filter
            o, offsets = o[..., : self.state_dim], o[..., self.state_dim :]
        chosen = range(self.seeds) if seeds is None else seeds
        states: list[Tensor | None] = [None] * self.seeds
        covariances: list[Tensor | None] = [None] * self.seeds
        filter_states: list[FilterState | None] = [None] * self.seeds
        for s in chosen:
            if self.filters is None:
                states[s] = o[s]
                continue
            seed_mask = None if everything_observed else observed if observed.dim() == 2 else observed[s]
            initial = None if state is None else state.filters[s]
            noise_offset = None if offsets is None else offsets[s]
            out = self.filters(s, o[s], mask=seed_mask, initial=initial, noise_offset=noise_offset)
            states[s], covariances[s] = out.states, out.covariances
            if out.states.shape[0] == 1 and out.states.shape[1] > 0:
                filter_states[s] = (out.states[0, -1], out.covariances[0, -1])
            elif state is not None:
                filter_states[s] = state.filters[s]
        return CausalOutput(o, states, covariances, CausalState(lstm_state, filter_states))

    def noncausal(self, channels: Tensor, seed: int = 0) -> Tensor:
        """The baseline's smoothing and the alignment of seed ``seed``, channel by channel: (B, T, C) -> (B, T, C).

        They act on each channel alone, so any set of channels may go through (the level channels only, or the
        levels beside their variances)."""
        if self.smoothing is not None:
            channels = self.smoothing(channels)
        if self.alignments is not None:
            channels = self.alignments(seed, channels)
        return channels

    def training_targets(self, z: Tensor, seed: int = 0) -> Tensor:
        """What the loss compares with the labels: ``noncausal(z)`` (B, T, n), or with per-rater targets each rater's
        aligned prediction (B, T, R * n), rater r in channels [r * n, (r + 1) * n) (the labels' order)."""
        if self.config.raters and self.alignments is not None:
            return self.alignments(seed, z, per_rater=True)
        return self.noncausal(z, seed)

    def noncausal_kernels(self, seed: int = 0) -> list[Tensor]:
        """The non-causal stages of seed ``seed`` as convolution weights `(2D + 1,)`, in order (for streaming)."""
        kernels = [] if self.smoothing is None else [self.smoothing.kernel()]
        if self.alignments is not None:
            kernels.append(self.alignments.seed_module(seed).kernel())
        return kernels

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> ModelOutput:
        """Whole sequences through a one-seed model. x: (B, T, d) features, NaN rows for frames without a face;
        mask: optional (B, T) bool, True = observed."""
        if self.seeds != 1:
            raise AffectError(f"model: forward() runs a one-seed model; this one holds {self.seeds} seeds")
        out = self.causal(x, mask=mask)
        z = out.states[0]
        assert z is not None
        return ModelOutput(
            y=bounded_state(self.noncausal(z)), z=z, P=out.covariances[0], observations=out.observations[0], _model=self
        )

    # ------------------------------------------------------------------------------------------------------------
    def alignment_parameters(self) -> list[nn.Parameter]:
        """The parameters that get their own learning rate (mu', s of adaptive alignment)."""
        learned = (AdaptiveAlignment, RaterAlignments)
        adaptive = self.alignments is not None and isinstance(self.alignments.template, learned)
        return list(self.alignments.parameters()) if adaptive else []

    def parameter_groups(self, lr: float, lr_align: float) -> list[dict[str, object]]:
        """Adam's parameter groups: the alignment parameters get their own learning rate, so that mu reaches a lag
        of seconds (docs/architecture.md, "Conventions")."""
        align = self.alignment_parameters()
        align_ids = {id(p) for p in align}
        groups: list[dict[str, object]] = [
            {"params": [p for p in self.parameters() if id(p) not in align_ids], "lr": lr}
        ]
        if align:
            groups.append({"params": align, "lr": lr_align})
        return groups

    def clip_grad_norm_per_seed(self, max_norm: float) -> Tensor:
        """:func:`torch.nn.utils.clip_grad_norm_` for each seed on its own. Returns the norms before clipping, (S,).

        Every parameter is stacked along the seed axis, so each gradient is read once for every seed's sum of squares
        (row s of a `(S, -1)` view) and scaled once by the seeds' coefficients."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        squares = torch.zeros(self.seeds, dtype=torch.float32, device=self.frontend.head_bias.device)
        for grad in grads:
            squares += grad.reshape(self.seeds, -1).square().sum(1).to(squares.dtype)
        norms = squares.sqrt()
        coefficients = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coefficients.view(-1, *([1] * (grad.dim() - 1))).to(grad.dtype))
        return norms

    def learned_lag(self, seed: int = 0) -> tuple[float, float]:
        """(mu in frames, sigma^2) of a seed's alignment: learned for AA, the fixed delay for MA, (0, 0) otherwise."""
        if self.alignments is None:
            return 0.0, 0.0
        alignment = self.alignments.seed_module(seed)
        if isinstance(alignment, RaterAlignments):  # the raters' mean
            return float(alignment.mu.detach().mean()), float(alignment.sigma2.detach().mean())
        if isinstance(alignment, AdaptiveAlignment):
            return float(alignment.mu.detach()), float(alignment.sigma2.detach())
        return float(alignment.shift), 0.0

    def rater_lags(self, seed: int = 0) -> dict[str, tuple[float, float]]:
        """{rater: (mu in frames, sigma^2)} of a seed's per-rater alignments; empty without per-rater targets."""
        if not self.config.raters or self.alignments is None:
            return {}
        alignment = self.alignments.seed_module(seed)
        pairs = zip(alignment.mu.detach().tolist(), alignment.sigma2.detach().tolist(), strict=True)
        return dict(zip(self.config.raters, pairs, strict=True))

    # ------------------------------------------------------------------------------------------------------------
    def seed_state(self, seed: int) -> dict[str, Tensor]:
        """The state of seed ``seed`` as a one-seed model's state dict (detached copies)."""
        state = {f"frontend.{name}": value[seed : seed + 1].detach().clone() for name, value in self._frontend_state()}
        for kind, stack in self._seed_stacks():
            state.update(stack.seed_state(seed, prefix=f"{kind}.0."))
        if self.smoothing is not None:
            state.update({f"smoothing.{k}": v.detach().clone() for k, v in self.smoothing.state_dict().items()})
        return state

    def _frontend_state(self) -> list[tuple[str, Tensor]]:
        return [*self.frontend.named_parameters(), *self.frontend.named_buffers()]

    def _seed_stacks(self) -> list[tuple[str, SeedStack]]:
        """(state-dict name, stack) of the filters and the alignments that this model has."""
        stacks = (("filters", self.filters), ("alignments", self.alignments))
        return [(kind, stack) for kind, stack in stacks if stack is not None]

    def load_seed_state(self, seed: int, state: dict[str, Tensor]) -> None:
        """Set seed ``seed``'s tensors from a one-seed state dict (as :meth:`seed_state` gives)."""
        with torch.no_grad():
            for name, value in self._frontend_state():
                value[seed : seed + 1].copy_(state[f"frontend.{name}"])
        for kind, stack in self._seed_stacks():
            stack.load_seed_state(seed, state, prefix=f"{kind}.0.")

    def seed_model(self, seed: int) -> AffectModel:
        """A one-seed model holding seed ``seed``'s weights (on this model's device)."""
        single = AffectModel(self.config)
        single.load_state_dict(self.seed_state(seed))
        return single.to(self.frontend.head_bias.device)
