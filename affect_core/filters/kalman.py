"""Differentiable linear Kalman filter (paper section III, KF layer) with a step-by-step and a parallel-scan path."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from affect_core.filters.base import BayesFilter, FilterOutput, kinematic_transition, symmetrise
from affect_core.filters.compiled import (
    LinearFilterRecursion,
    LinearStateRecursion,
    RiccatiRecursion,
    linear_filter_values,
)
from affect_core.filters.scan import associative_scan
from affect_core.filters.types import MaskTorch, ObservationsTorch


def kalman_gain(P_pred: Tensor, H: Tensor, R: Tensor) -> Tensor:
    """K = P^ H^T (H P^ H^T + R)^-1 by a Cholesky solve (S is symmetric positive definite).

    Args:
        P_pred: Predicted covariance P^. Shape `(..., n, n)`.
        H: Observation matrix. Shape `(m, n)`.
        R: Observation noise covariance. Shape `(m, m)`.

    Returns:
        Gain K. Shape `(..., n, m)`.
    """
    S = symmetrise(H @ P_pred @ H.mT + R)
    chol, _ = torch.linalg.cholesky_ex(S)  # no error check: a host sync per step otherwise
    # K^T = S^-1 H P^ because S and P^ are symmetric.
    return torch.cholesky_solve(H @ P_pred, chol).mT


def joseph_update(P_pred: Tensor, K: Tensor, H: Tensor, R: Tensor) -> Tensor:
    """P = (I - K H) P^ (I - K H)^T + K R K^T, symmetrised: positive definite whatever the rounding in K.

    Shapes: P_pred `(..., n, n)`, K `(..., n, m)`, H `(m, n)`, R `(m, m)`; returns `(..., n, n)`.
    """
    eye = torch.eye(P_pred.shape[-1], dtype=P_pred.dtype, device=P_pred.device)
    IKH = eye - K @ H
    return symmetrise(IKH @ P_pred @ IKH.mT + K @ R @ K.mT)


def _riccati_combine(earlier: tuple[Tensor, ...], later: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Associative operator on covariance filtering elements (A, C, J) (Sarkka & Garcia-Fernandez 2021, eq. 13-14
    without the data terms b, eta). Shapes `(Bc, L, n, n)` each."""
    A_i, C_i, J_i = earlier
    A_j, C_j, J_j = later
    eye = torch.eye(A_i.shape[-1], dtype=A_i.dtype, device=A_i.device)
    N = eye + C_i @ J_j
    G = torch.linalg.solve(N, A_j, left=False)  # A_j (I + C_i J_j)^-1
    U = torch.linalg.solve(N, A_i)  # (I + C_i J_j)^-1 A_i, so U^T = A_i^T (I + J_j C_i)^-1
    A = G @ A_i
    C = symmetrise(G @ C_i @ A_j.mT + C_j)
    J = symmetrise(U.mT @ J_j @ A_i + J_i)
    return A, C, J


def _affine_combine(earlier: tuple[Tensor, ...], later: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Composition of affine maps Z -> A Z + b: apply `earlier` then `later`. A `(Bc, L, n, n)`, b `(Bc, L, n, k)`."""
    A_i, b_i = earlier
    A_j, b_j = later
    return A_j @ A_i, torch.baddbmm(b_j.flatten(0, 1), A_j.flatten(0, 1), b_i.flatten(0, 1)).view_as(b_j)


class KalmanFilter(BayesFilter):
    """Linear Kalman filter layer with learnable F, H, Q, R (docs/architecture.md, "Conventions").

    z^_t = F z_{t-1}; P^_t = F P_{t-1} F^T + Q; K_t = P^_t H^T (H P^_t H^T + R)^-1; z_t = z^_t + K_t (o_t - H z^_t);
    P_t = (I - K_t H) P^_t (Joseph form). Unobserved frames are predict-only steps with the mean-reverting gap
    transition (G, c) in place of F (`BayesFilter.gap_transition`).

    Paths (`method`), all exact:
    - "reference": loops over t (the oracle).
    - "scan": parallel over time. The covariance recursion is a prefix scan over Sarkka & Garcia-Fernandez filtering
      elements (A, C, J) (an unobserved frame's element is (G, Q, 0)), shared by the whole batch when there is no
      mask; then the state recursion z_t = (I - K_t H) F z_{t-1} + K_t o_t (G z_{t-1} + c where unobserved) is a
      prefix scan over affine maps. O(log T) batched steps, no host syncs.
    - "compiled": compiled CPU loops with hand-derived backwards (`affect_core.filters._linear_kernels`): without
      a mask, the covariance recursion once for the batch, then the state recursion
      z_t = F z_{t-1} + K_t (o_t - H F z_{t-1}) per sequence; with one (or per-frame noise) and a 3-dim state, both
      in one step, four sequences side by side in vector lanes (`compiled.LinearFilterRecursion`); the batch split
      over torch's threads. Frames without a face are never read (gap step z_t = G z_{t-1} + c).
    - "fast" / "auto": "compiled" for CPU tensors, "scan" elsewhere (GPU).
    """

    has_fast_path = True
    methods = ("auto", "reference", "fast", "scan", "compiled")

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
        self.F = nn.Parameter(kinematic_transition(num_dims, self.dt))
        self.H = nn.Parameter(torch.eye(self.obs_dim, self.state_dim))

    def _matrices(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        Q, R = self.noise_covariances(like)
        return self.F.to(like), self.H.to(like), Q, R

    # ------------------------------------------------------------------------------------------------------------
    def _filter_reference(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        F, H, Q, R = self._matrices(observations)
        z0, P0 = self.prior(observations)
        batch, steps, _ = observations.shape
        z = z0.expand(batch, -1)
        P = P0.expand(batch, -1, -1)
        states, covariances = [], []
        G, c = self.gap_transition(observations)
        for t in range(steps):
            if mask is None:
                z_pred = z @ F.mT  # z^_t = F z_{t-1}
                P_pred = symmetrise(F @ P @ F.mT + Q)  # P^_t = F P_{t-1} F^T + Q
            else:  # without a face the gap step: z^_t = G z_{t-1} + c, P^_t = G P_{t-1} G^T + Q
                observed = mask[:, t, None]
                z_pred = torch.where(observed, z @ F.mT, z @ G.mT + c)
                F_t = torch.where(observed[..., None], F, G)
                P_pred = symmetrise(F_t @ P @ F_t.mT + Q)
            R_t = R if noise is None else torch.diag_embed(noise[:, t])  # learned noise: R_t = diag(softplus(r + u_t))
            K = kalman_gain(P_pred, H, R_t)
            if mask is not None:
                K = K * mask[:, t, None, None].to(K.dtype)  # K = 0: predict only
            innovation = observations[:, t] - z_pred @ H.mT
            z = z_pred + (K @ innovation.unsqueeze(-1)).squeeze(-1)
            P = joseph_update(P_pred, K, H, R_t)
            states.append(z)
            covariances.append(P)
        return FilterOutput(torch.stack(states, dim=1), torch.stack(covariances, dim=1))

    # ------------------------------------------------------------------------------------------------------------
    def _path(self, observations: Tensor) -> str:
        """The method that filters `observations`: "fast" and "auto" are "compiled" on the CPU, "scan" elsewhere."""
        if self.method in ("fast", "auto"):
            return "compiled" if observations.device.type == "cpu" else "scan"
        return self.method

    def reads_unobserved(self, observations: Tensor) -> bool:
        """The compiled kernels never read a frame without a face (the gap step) and give it a zero gradient."""
        return self._path(observations) != "compiled"

    def _filter_fast(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        if self._path(observations) == "compiled":
            return self._filter_compiled(observations, mask, noise)
        return self._filter_scan(observations, mask, noise)

    def _filter_compiled(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        F, H, Q, R = self._matrices(observations)
        G, c = self.gap_transition(observations)
        z0, P0 = self.prior(observations)
        batch, steps, n = observations.shape[0], observations.shape[1], self.state_dim
        # Without a mask and with one R the covariances and gains do not depend on the data: one recursion serves
        # the batch. A mask or per-frame R_t (learned observation noise) makes them per sequence.
        if mask is not None:
            observed = mask.to(observations.dtype)
        elif noise is not None:
            observed = observations.new_ones(batch, steps)
        else:
            observed = observations.new_ones(1, steps)
        inputs = (observations, F, H, Q, R, P0, z0, G, c) + (() if noise is None else (noise,))
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in inputs):
            states, covariances = linear_filter_values(observed, observations, F, H, Q, R, P0, z0, G, c, noise)
            return FilterOutput(states, covariances.expand(batch, steps, n, n))
        if observed.shape[0] > 1 and n == 3:  # each sequence its own covariances: the whole step at once
            states, covariances = LinearFilterRecursion.apply(
                observations, observed, F, G, H @ F, c, H, Q, R, P0, z0, noise
            )
            return FilterOutput(states, covariances)
        covariances, gains = RiccatiRecursion.apply(observed, F, G, H, Q, R, P0, noise)
        states = LinearStateRecursion.apply(observations, observed, gains, F, H @ F, G, c, z0)
        return FilterOutput(states, covariances.to(observations.dtype).expand(batch, steps, n, n))

    def _filter_scan(
        self, observations: ObservationsTorch, mask: MaskTorch | None, noise: Tensor | None = None
    ) -> FilterOutput:
        F, H, Q, R = self._matrices(observations)
        z0, P0 = self.prior(observations)
        batch, steps, n = observations.shape[0], observations.shape[1], self.state_dim
        # Without a mask and with one R the covariances do not depend on the data: one recursion serves the batch
        # (Bc = 1). Per-frame R_t (learned observation noise) makes them per sequence, as a mask does (Bc = B).
        shared = mask is None and noise is None
        if noise is not None:
            R = torch.diag_embed(noise)  # (B, T, m, m): R_t = diag(softplus(r + u_t))
        observed = mask.to(observations.dtype) if mask is not None else observations.new_ones(1, steps)  # (Bc, T)
        obs_flag = observed[..., None, None]
        eye = torch.eye(n, dtype=observations.dtype, device=observations.device)
        zero = torch.zeros_like(eye)

        # Filtering elements of Sarkka & Garcia-Fernandez (2021), eq. 10-12, as if P_{t-1} were 0.
        K_q = kalman_gain(Q, H, R)
        A_obs = (eye - K_q @ H) @ F
        C_obs = joseph_update(Q, K_q, H, R)
        HF = H @ F
        S_q = symmetrise(H @ Q @ H.mT + R)
        J_obs = symmetrise(HF.mT @ torch.cholesky_solve(HF, torch.linalg.cholesky_ex(S_q)[0]))
        G, c = self.gap_transition(observations)
        A = obs_flag * A_obs + (1 - obs_flag) * G  # predict-only element: the gap step (G, Q, 0)
        C = obs_flag * C_obs + (1 - obs_flag) * Q
        J = obs_flag * J_obs
        # Each step's transition: F where observed, the gap step's G elsewhere (no mask: F throughout).
        F_t = F if mask is None else torch.where(obs_flag.bool(), F, G)  # (n, n) or (Bc, T, n, n)
        F_1 = F if mask is None else F_t[:, 0]
        # First element carries the prior: A = 0, J = 0, C = P_1 from P_0.
        P1_pred = symmetrise(F_1 @ P0 @ F_1.mT + Q)
        R_1 = R if noise is None else R[:, 0]
        K1 = kalman_gain(P1_pred, H, R_1) * obs_flag[:, 0]
        C1 = joseph_update(P1_pred, K1, H, R_1)
        A = torch.cat((zero.expand(A.shape[0], 1, n, n), A[:, 1:]), dim=1)
        C = torch.cat((C1.unsqueeze(1), C[:, 1:]), dim=1)
        J = torch.cat((zero.expand(J.shape[0], 1, n, n), J[:, 1:]), dim=1)
        _, P_scan, _ = associative_scan(_riccati_combine, (A, C, J))  # (Bc, T, n, n) = P_t

        # Gains from P_{t-1}, then the per-step Joseph update, exactly as the reference computes them.
        P_prev = torch.cat((P0.expand(P_scan.shape[0], 1, n, n), P_scan[:, :-1]), dim=1)
        P_pred = symmetrise(F_t @ P_prev @ F_t.mT + Q)
        K = kalman_gain(P_pred, H, R) * obs_flag  # (Bc, T, n, m)
        P = joseph_update(P_pred, K, H, R)

        # State recursion z_t = (I - K_t H) F_t z_{t-1} + K_t o_t (+ c where unobserved) as a scan over affine maps;
        # z_0 folded into t = 1. The batch goes in the last dim when the maps are shared (a (T, n, n) @ (T, n, B)
        # matmul per level).
        A_state = (eye - K @ H) @ F_t  # (Bc, T, n, n)
        if shared:
            columns = observations.permute(1, 2, 0).unsqueeze(0)  # (1, T, m, B)
            b_state = K @ columns  # (1, T, n, B)
        else:
            columns = observations.unsqueeze(-1)  # (B, T, m, 1)
            b_state = K @ columns + (1 - obs_flag[..., 0]).unsqueeze(-1) * c.unsqueeze(-1)  # (B, T, n, 1)
        first = b_state[:, :1] + A_state[:, :1] @ z0.unsqueeze(-1)
        b_state = torch.cat((first, b_state[:, 1:]), dim=1)
        _, states = associative_scan(_affine_combine, (A_state, b_state))
        states = states[0].permute(2, 0, 1) if shared else states.squeeze(-1)
        return FilterOutput(states, P.expand(batch, steps, n, n))
