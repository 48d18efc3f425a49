"""Common ground of the Bayesian filter layers: output record, abstract base, kinematic model, noise parameters."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from affect_core.errors import fail
from affect_core.filters.types import CovarianceTorch, MaskTorch, ObservationsTorch, StatesTorch

METHODS = ("auto", "reference", "fast", "scan", "compiled")

GAP_RHO_MAX = 1.0 - 1e-4
"""Upper bound of every gap damping factor rho: the stationary variance q / (1 - rho^2) of a stretch without a face
stays finite (at most q / 2e-4)."""

GAP_TIME_CONSTANTS = (10.0, 1.0, 1.0)
"""Initial time constants in seconds of the gap dynamics (level, velocity, acceleration): rho = exp(-dt / tau)."""

GAP_PARAMETERS = ("gap_rho", "gap_mean")
"""Parameters that bundles written before the gap dynamics lack: they load with their initial values."""


@dataclass
class FilterOutput:
    """What a filter returns for a batch of sequences.

    Attributes:
        states: Filtered states z_t for t = 1..T. Shape `(B, T, state_dim)`.
        covariances: Filtered covariances P_t for t = 1..T. Shape `(B, T, state_dim, state_dim)`; may be an expanded
            (stride-0 batch) view when all sequences share the same covariances.
    """

    states: StatesTorch
    covariances: CovarianceTorch


def kinematic_transition(num_dims: int, dt: float) -> Tensor:
    """Constant-acceleration transition matrix for `num_dims` independent affect dimensions.

    Dimension j owns states `[3j, 3j + 1, 3j + 2]` = level, d level/dt, d2 level/dt2 (derivatives per second), so each
    diagonal block is `[[1, dt, dt^2 / 2], [0, 1, dt], [0, 0, 1]]`.

    Args:
        num_dims: Number of affect dimensions (1 for one of valence/arousal, 2 for the joint variant).
        dt: Time between frames in seconds (1 / fps).

    Returns:
        Block-diagonal float32 matrix. Shape `(3 * num_dims, 3 * num_dims)`.
    """
    if num_dims < 1:
        raise fail("kinematic_transition", f"num_dims must be >= 1, got {num_dims}")
    block = torch.tensor([[1.0, dt, 0.5 * dt * dt], [0.0, 1.0, dt], [0.0, 0.0, 1.0]], dtype=torch.float32)
    return torch.block_diag(*([block] * num_dims))


def inverse_softplus(value: float) -> float:
    """The raw parameter x with softplus(x) = value (value > 0)."""
    if value <= 0:
        raise fail("noise variance", f"must be > 0, got {value}")
    return value + math.log(-math.expm1(-value))


def symmetrise(matrix: Tensor) -> Tensor:
    """(M + M^T) / 2 over the last two dimensions. Shape `(..., n, n)` in and out."""
    return 0.5 * (matrix + matrix.mT)


class BayesFilter(nn.Module, abc.ABC):
    """Differentiable Bayesian filter over a batch of observation sequences.

    Holds what every filter here shares: the state layout (`state_dim = 3 * num_dims`, `obs_dim = state_dim`), the
    learnable diagonal noise covariances Q = diag(softplus(q)) and R = diag(softplus(r)), the prior z_0 = 0,
    P_0 = p0 * I (buffers), and the gap dynamics (`gap_transition`). `forward` checks shapes, cleans unobserved
    frames and dispatches on `method`.

    A frame without an observation (mask False) is a predict-only step with the mean-reverting transition
    z^_t = G z_{t-1} + c, P^_t = G P_{t-1} G^T + Q instead of the filter's own: the constant-acceleration model
    with its diagonal damped, per affect dimension G = [[rho_l, dt, dt^2/2], [0, rho_v, dt], [0, 0, rho_a]], each
    rho in (0, GAP_RHO_MAX) learnable (`gap_rho`, raw: rho = GAP_RHO_MAX * sigmoid(gap_rho)), c = (1 - rho) * mean
    on each level component and 0 on the derivatives, the mean learnable per affect dimension (`gap_mean`). G is
    triangular with eigenvalues rho < 1: through any stretch without a face the level first follows its velocity
    (as the paper's predict step does), then relaxes towards the mean, the derivatives towards 0, and the covariance
    towards the stationary solution of P = G P G^T + Q: bounded whatever the stretch's length. Observed frames are
    the paper's filter.

    Learned observation noise (the "virtual sensor"): `forward(..., noise_offset=u)` gives frame t of sequence b its
    own R_t = diag(softplus(r + u[b, t])) (`observation_variances`); without it every frame has R.

    A subclass must override `_filter_reference` (the plain step-by-step loop, kept as the oracle). It may override
    `_filter_fast`, set `has_fast_path = True` and list the method names it accepts in `methods`; every method
    other than "reference" then goes to `_filter_fast`, which picks its implementation from `self.method`.
    """

    has_fast_path: bool = False
    methods: tuple[str, ...] = ("auto", "reference")

    def __init__(
        self,
        *,
        num_dims: int = 1,
        fps: float = 25.0,
        q_init: float = 1e-3,
        r_init: float = 1e-1,
        p0: float = 1.0,
        method: str = "auto",
    ) -> None:
        super().__init__()
        if method not in self.methods:
            raise fail(type(self).__name__, f"method must be one of {self.methods}, got {method!r}")
        if fps <= 0:
            raise fail(type(self).__name__, f"fps must be > 0, got {fps}")
        self.num_dims = num_dims
        self.state_dim = 3 * num_dims
        self.obs_dim = self.state_dim
        self.dt = 1.0 / fps
        self.method = method
        n = self.state_dim
        self.q = nn.Parameter(torch.full((n,), inverse_softplus(q_init)))
        self.r = nn.Parameter(torch.full((self.obs_dim,), inverse_softplus(r_init)))
        self.register_buffer("z0", torch.zeros(n))
        self.register_buffer("P0", p0 * torch.eye(n))
        self.gap_rho = nn.Parameter(self.initial_gap_rho())
        self.gap_mean = nn.Parameter(torch.zeros(num_dims))
        # The gap step's kinematic couplings (dt, dt^2/2, dt above each dimension's diagonal): a constant, made once
        # and moved with the module (not saved: it follows from fps).
        couplings = kinematic_transition(num_dims, self.dt) - torch.eye(n)
        self.register_buffer("gap_couplings", couplings, persistent=False)

    def initial_gap_rho(self) -> Tensor:
        """The raw `gap_rho` for rho = exp(-dt / tau), tau = `GAP_TIME_CONSTANTS` per state component. Shape `(n,)`."""
        rho = torch.tensor([math.exp(-self.dt / tau) for tau in GAP_TIME_CONSTANTS] * self.num_dims)
        return torch.logit(rho.double() / GAP_RHO_MAX).float()

    def gap_transition(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """G `(n, n)` and c `(n,)` of the gap step z^ = G z + c, in the dtype/device of `like`.

        G = diag(rho) + the kinematic model's couplings (dt, dt^2/2, dt above the diagonal of each dimension's
        block), rho = GAP_RHO_MAX * sigmoid(gap_rho); c = (1 - rho) * mean on level components (3j), 0 on the
        derivatives.
        """
        rho = GAP_RHO_MAX * torch.sigmoid(self.gap_rho.to(like))
        mean = self.gap_mean.to(like)
        level_mean = torch.stack((mean, torch.zeros_like(mean), torch.zeros_like(mean)), dim=-1).flatten()
        return torch.diag_embed(rho) + self.gap_couplings.to(like), (1 - rho) * level_mean

    def stationary_gap_covariance(self) -> Tensor:
        """P_inf = G P_inf G^T + Q: the covariance a stretch without a face settles at, whatever its start (G's
        eigenvalues are below 1). Float64 `(n, n)`, without a graph; by doubling, P_2k = P_k + A_k P_k A_k^T and
        A_2k = A_k^2 from P_1 = Q, A_1 = G: 2^60 steps."""
        with torch.no_grad():
            like = torch.zeros((), dtype=torch.float64, device=self.gap_rho.device)
            G, _ = self.gap_transition(like)
            P, A = self.noise_covariances(like)[0], G
            for _ in range(60):
                P = P + A @ P @ A.mT
                A = A @ A
        return P

    # ------------------------------------------------------------------------------------------------------------
    def noise_covariances(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Q = diag(softplus(q)) `(n, n)` and R = diag(softplus(r)) `(m, m)` in the dtype/device of `like`."""
        q = nn.functional.softplus(self.q.to(like))
        r = nn.functional.softplus(self.r.to(like))
        return torch.diag_embed(q), torch.diag_embed(r)

    def observation_variances(self, noise_offset: Tensor) -> Tensor:
        """The per-frame diagonal of R_t = diag(softplus(r + u_t)), in the dtype/device of `noise_offset`.

        Args:
            noise_offset: The offsets u_t. Shape should be `(B, T, obs_dim)`.

        Returns:
            Variances softplus(r + u_t). Shape `(B, T, obs_dim)`.
        """
        return nn.functional.softplus(self.r.to(noise_offset) + noise_offset)

    def prior(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Prior mean z_0 `(n,)` and covariance P_0 `(n, n)` in the dtype/device of `like`: the learned prior, or the
        `initial` state given to the running `forward` call."""
        if self._initial is not None:
            z0, P0 = self._initial
            return z0.to(like), P0.to(like)
        return self.z0.to(like), self.P0.to(like)

    # ------------------------------------------------------------------------------------------------------------
    _initial: tuple[Tensor, Tensor] | None = None

    def forward(
        self,
        observations: ObservationsTorch,
        *,
        mask: MaskTorch | None = None,
        initial: tuple[Tensor, Tensor] | None = None,
        noise_offset: Tensor | None = None,
    ) -> FilterOutput:
        """Filter a batch of observation sequences (predict then update at every t = 1..T).

        Args:
            observations: Observations o_t. Shape should be `(B, T, obs_dim)`; floating point of any dtype/device
                (the parameters are cast to it). Values at unobserved frames are ignored (they may be NaN).
            mask: Bool, True where the frame is observed; a False frame is a predict-only step (no update).
                Shape should be `(B, T)`. None means all observed.
            initial: (z_0 `(n,)`, P_0 `(n, n)`) replacing the prior for this call, e.g. the last filtered state
                and covariance of the previous chunk of the same sequence (chunked scoring). None: the prior.
            noise_offset: Per-frame observation-noise offsets u_t: frame t's R_t = diag(softplus(r + u_t)).
                Shape should be `(B, T, obs_dim)`. None: R = diag(softplus(r)) on every frame. Values at unobserved
                frames are ignored.

        Returns:
            FilterOutput with states `(B, T, state_dim)` and covariances `(B, T, state_dim, state_dim)`.
        """
        name = type(self).__name__
        if observations.dim() != 3 or observations.shape[-1] != self.obs_dim:
            raise fail(
                name,
                f"observations must have shape (B, T, {self.obs_dim}), got {tuple(observations.shape)}",
            )
        if not observations.is_floating_point():
            raise fail(name, f"observations must be floating point, got {observations.dtype}")
        if mask is not None:
            if mask.shape != observations.shape[:2]:
                raise fail(
                    name, f"mask must have shape {tuple(observations.shape[:2])} (B, T), got {tuple(mask.shape)}"
                )
            mask = mask.to(device=observations.device, dtype=torch.bool)
            if self.reads_unobserved(observations):
                # Unobserved frames never reach the update; zeroing them keeps NaN out of the arithmetic and its
                # gradient.
                observations = torch.where(mask.unsqueeze(-1), observations, torch.zeros_like(observations))
        noise: Tensor | None = None
        if noise_offset is not None:
            if noise_offset.shape != observations.shape:
                raise fail(
                    name,
                    f"noise_offset must have shape {tuple(observations.shape)} (B, T, {self.obs_dim}), "
                    f"got {tuple(noise_offset.shape)}",
                )
            noise_offset = noise_offset.to(observations)
            if mask is not None:  # never read at unobserved frames (K = 0); kept finite there for the arithmetic
                noise_offset = torch.where(mask.unsqueeze(-1), noise_offset, torch.zeros_like(noise_offset))
            noise = self.observation_variances(noise_offset)
        if observations.shape[1] == 0:
            n = self.state_dim
            b = observations.shape[0]
            return FilterOutput(observations.new_zeros(b, 0, n), observations.new_zeros(b, 0, n, n))
        if initial is not None:
            z0, P0 = initial
            if z0.shape != (self.state_dim,) or P0.shape != (self.state_dim, self.state_dim):
                raise fail(name, f"initial state must have shapes ({self.state_dim},) and {(self.state_dim,) * 2}")
        self._initial = initial
        try:
            if self.method == "reference" or not self.has_fast_path:
                return self._filter_reference(observations, mask, noise)
            return self._filter_fast(observations, mask, noise)
        finally:
            self._initial = None

    def reads_unobserved(self, observations: Tensor) -> bool:
        """Whether the path that filters `observations` does arithmetic on the observations of frames without one
        (multiplied by a zero gain): they are then zeroed first, so that a NaN there stays out. A path that never
        reads them (and gives them a zero gradient) returns False and is spared the pass."""
        return True

    @abc.abstractmethod
    def _filter_reference(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        """Step-by-step loop over time. observations `(B, T, m)` (clean), mask `(B, T)` bool or None, noise the
        per-frame diagonal of R_t `(B, T, m)` (`observation_variances`) or None (R on every frame)."""

    def _filter_fast(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        """Same result as `_filter_reference`, computed faster (implementation chosen by `self.method`). Same shapes."""
        raise NotImplementedError
