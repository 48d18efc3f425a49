"""Differentiable extended Kalman filter (paper section III, EKF layer) with tanh transition and observation models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from affect_core.filters.base import BayesFilter, FilterOutput, kinematic_transition, symmetrise
from affect_core.filters.compiled import CompiledRecursion
from affect_core.filters.kalman import joseph_update, kalman_gain
from affect_core.filters.types import MaskTorch, ObservationsTorch


class ExtendedKalmanFilter(BayesFilter):
    """Extended Kalman filter layer: f(z) = tanh(W_f z + b_f), h(z) = tanh(W_h z + b_h) (docs/architecture.md,
    "Conventions").

    z^_t = f(z_{t-1}); F_t = diag(1 - z^_t^2) W_f; P^_t = F_t P_{t-1} F_t^T + Q;
    h_t = h(z^_t); H_t = diag(1 - h_t^2) W_h; K_t = P^_t H_t^T (H_t P^_t H_t^T + R)^-1;
    z_t = z^_t + K_t (o_t - h_t); P_t = (I - K_t H_t) P^_t (Joseph form). Unobserved frames are predict-only steps
    with the mean-reverting gap transition z^_t = G z_{t-1} + c (Jacobian G) in place of f
    (`BayesFilter.gap_transition`).
    W_f starts at the constant-acceleration kinematics, W_h at the identity, the biases at 0.

    Paths (`method`): "reference" loops over t in PyTorch (any device; the oracle). "fast" / "compiled" / "auto" run
    the same recursion as one compiled CPU loop per sequence with a hand-derived backward pass
    (`affect_core.filters._kernels`, float64 inside). On a GPU too: the observations (B, T, m) go to the host and the
    states come back once per forward and once per backward pass, which costs far less than the reference loop's
    dozens of kernel launches per frame (a 3 x 3 recursion cannot fill a GPU).
    """

    has_fast_path = True
    methods = ("auto", "reference", "fast", "compiled")

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
        super().__init__(num_dims=num_dims, fps=fps, q_init=q_init, r_init=r_init, p0=p0, method=method)
        self.W_f = nn.Parameter(kinematic_transition(num_dims, self.dt))
        self.b_f = nn.Parameter(torch.zeros(self.state_dim))
        self.W_h = nn.Parameter(torch.eye(self.obs_dim, self.state_dim))
        self.b_h = nn.Parameter(torch.zeros(self.obs_dim))

    def _parameters_like(self, like: Tensor) -> tuple[Tensor, ...]:
        Q, R = self.noise_covariances(like)
        return self.W_f.to(like), self.b_f.to(like), self.W_h.to(like), self.b_h.to(like), Q, R

    # ------------------------------------------------------------------------------------------------------------
    def _filter_reference(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        W_f, b_f, W_h, b_h, Q, R = self._parameters_like(observations)
        z0, P0 = self.prior(observations)
        batch, steps, _ = observations.shape
        z = z0.expand(batch, -1)
        P = P0.expand(batch, -1, -1)
        G, c = self.gap_transition(observations)
        states, covariances = [], []
        for t in range(steps):
            z_pred = torch.tanh(z @ W_f.mT + b_f)  # z^_t = f(z_{t-1})
            F_t = (1 - z_pred.square()).unsqueeze(-1) * W_f  # Jacobian of f at z_{t-1}
            if mask is not None:  # without a face the gap step: z^_t = G z_{t-1} + c, Jacobian G
                observed = mask[:, t, None]
                z_pred = torch.where(observed, z_pred, z @ G.mT + c)
                F_t = torch.where(observed[..., None], F_t, G)
            P_pred = symmetrise(F_t @ P @ F_t.mT + Q)
            h = torch.tanh(z_pred @ W_h.mT + b_h)
            H_t = (1 - h.square()).unsqueeze(-1) * W_h  # Jacobian of h at z^_t
            R_t = R if noise is None else torch.diag_embed(noise[:, t])  # learned noise: R_t = diag(softplus(r + u_t))
            K = kalman_gain(P_pred, H_t, R_t)
            if mask is not None:
                K = K * mask[:, t, None, None].to(K.dtype)  # K = 0: predict only
            z = z_pred + (K @ (observations[:, t] - h).unsqueeze(-1)).squeeze(-1)
            P = joseph_update(P_pred, K, H_t, R_t)
            states.append(z)
            covariances.append(P)
        return FilterOutput(torch.stack(states, dim=1), torch.stack(covariances, dim=1))

    def _filter_fast(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        W_f, b_f, W_h, b_h, Q, R = self._parameters_like(observations)
        z0, P0 = self.prior(observations)
        G, c = self.gap_transition(observations)
        observed = observations.new_ones(observations.shape[:2]) if mask is None else mask.to(observations.dtype)
        states, covariances = CompiledRecursion.apply(
            observations, observed, W_f, b_f, W_h, b_h, Q, R, z0, P0, G, c, noise, False, torch.is_grad_enabled()
        )
        return FilterOutput(states, covariances)
