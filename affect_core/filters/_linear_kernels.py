"""Compiled (numba) kernels of the linear Kalman filter split in two recursions, each with a hand-derived backward.

For the linear filter the covariance recursion (the Riccati equation) does not look at the observations:

    P^_t = F P_{t-1} F^T + Q;  S_t = H P^_t H^T + R;  K_t = mu_t P^_t H^T S_t^-1;
    P_t = (I - K_t H) P^_t (I - K_t H)^T + K_t R K_t^T   (Joseph form, symmetrised)

depends only on the mask mu_t (1 = observed, 0 = predict only). Without missing frames one recursion serves the
whole batch; the state recursion is then a cheap linear time-varying recurrence per sequence:

    z_t = F z_{t-1} + K_t (o_t - HF z_{t-1}).

A predict-only step (mu_t = 0) uses the gap transition instead of F (`BayesFilter.gap_transition`):
P_t = G P_{t-1} G^T + Q and z_t = G z_{t-1} + c.

The covariance recursion has one row for the whole batch (`Bc = 1`, no missing frames) or one per sequence.
Inference keeps its distinct steps once (`riccati_nodes`) and the state recursion reads each step's gain through the
node index; training writes every step out (`riccati_forward`) for the backward passes. Training with a row per
sequence and n = 3 runs both recursions in one step instead, four sequences side by side in vector lanes
(`filter_lanes_forward`, `filter_lanes_backward`, at the end of this module), with two shorter steps where they give
the whole step's values: the predict step where no lane has a face, and the state recursion alone where every lane
has a face and its covariance has settled (its last step gave back P bit for bit). For n = 3 the steps are the
generated scalar code of `_steps3`, the state recursion the scalar loops at the end of this module. Arrays are
float64 and C-contiguous (B batch, Bc covariance rows, T steps, n state, m observation). All kernels release the GIL,
so callers may run slices of the batch on several threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from affect_core.filters._kernels import (
    _gain_adjoint,
    _joseph,
    _joseph_adjoint,
    _mm,
    _mm_nt,
    _mm_tn,
    _noise_matrix,
    _set_frame_noise,
    _spd_inverse,
    _sym,
    _unobserved,
)
from affect_core.filters._steps3 import (
    LANES,
    LANES_KF_GC,
    LANES_KF_GF,
    LANES_KF_GH,
    LANES_KF_GHF,
    LANES_KF_GO,
    LANES_KF_GP,
    LANES_KF_GP_OUT,
    LANES_KF_GQ,
    LANES_KF_GR,
    LANES_KF_GZ,
    LANES_KF_GZ_OUT,
    LANES_KF_MU,
    LANES_KF_O,
    LANES_KF_P,
    LANES_KF_P_OUT,
    LANES_KF_R,
    LANES_KF_SLOTS,
    LANES_KF_Z,
    LANES_KF_Z_OUT,
    gap_step,
    gap_step_adjoint,
    lanes_kf_step,
    lanes_kf_step_adjoint,
    lanes_kf_step_adjoint_at_optimum,
    lanes_kf_step_adjoint_gap,
    lanes_kf_step_gap,
    lanes_kf_step_settled,
    observed_step,
    observed_step_adjoint,
)


@njit(cache=True, inline="always", error_model="numpy")
def _riccati_step(P, mu, F, G, H, Q, R, Pp, S, L, Sinv, Bm, K, Mm, t1, n):
    """P^ = sym(A P A^T + Q) with A = F (A = G where mu = 0); S = sym(H P^ H^T + R); K = mu P^ H^T S^-1;
    M = I - K H. Fills the intermediates."""
    m = n
    A = G if mu == 0.0 else F
    _mm(A, P, t1, n)
    _mm_nt(t1, A, Pp, n)
    for i in range(n):
        for k in range(n):
            Pp[i, k] += Q[i, k]
    _sym(Pp, n)
    if mu == 0.0:  # predict only: K = 0, M = I, S not formed
        _unobserved(Sinv, K, Mm, n)
        return
    _mm_nt(Pp, H, Bm, n)
    _mm(H, Bm, S, n)
    for i in range(m):
        for k in range(m):
            S[i, k] += R[i, k]
    _sym(S, n)
    _spd_inverse(S, L, Sinv, n)
    _mm(Bm, Sinv, K, n)
    for i in range(n):
        for k in range(m):
            K[i, k] *= mu
    _mm(K, H, Mm, n)
    for i in range(n):
        for k in range(n):
            Mm[i, k] = (1.0 if i == k else 0.0) - Mm[i, k]


@njit(cache=True, inline="always", error_model="numpy")
def _same(A, B, n):
    """A == B element for element (bit for bit for finite values)."""
    for i in range(n):
        for k in range(n):
            if A[i, k] != B[i, k]:
                return False
    return True


@njit(cache=True, inline="always", error_model="numpy")
def _repeats(covs, gains, new, earlier, n):
    """Node `new` equals node `earlier` (> 0) bit for bit: one entry compared first, the rest only if it matches."""
    return (
        earlier > 0
        and covs[new, 0, 0] == covs[earlier, 0, 0]
        and _same(covs[new], covs[earlier], n)
        and _same(gains[new], gains[earlier], n)
    )


@njit(cache=True, nogil=True, error_model="numpy")
def riccati_nodes(mask, F, G, H, Q, R, noise, P0, size):
    """mask (Bc, T) of 0/1 -> node (Bc, T): the node holding each step's (P_t, K_t); the nodes' covariances
    (count, n, n) and gains (count, n, m); and the number of steps computed (the others were shared). What
    inference reads (`compiled.linear_filter_values`): no copy of every step is written.

    A step is a function of its input P_{t-1} and mu_t only, so distinct steps are computed once and shared: node 0
    is the prior P_0 (gain zero), every other node one computed step, and ``succ[node, mu]`` is the node that follows
    a node when the next frame is (mu = 1) or is not (mu = 0) observed. Rows whose masks share a prefix share its
    steps; a step whose output equals, bit for bit, that of its input's node (a fixed point) or of that node's parent
    (the two-cycle rounding often settles into) leads back to that node, so a settled stretch, and the same gap after
    it, cost no new steps within a row or across rows. A mask value other than 0 and 1 is computed without sharing,
    and so is every step where each frame has its own observation noise (noise (Bc, T, m): R_t = diag(noise[b, t]);
    a leading 0: R on every frame).
    """
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    Bc, T = mask.shape
    m = n
    # At most one node a step, plus the prior: room for all of them up front (the unused ones are never written),
    # none copied as the count grows.
    capacity = Bc * T + 1
    covs, gains = np.empty((capacity, n, n)), np.empty((capacity, n, m))
    covs[0], gains[0] = P0, 0.0
    node = np.empty((Bc, T), dtype=np.int64)
    Pp, Mm, t1, t2, t3 = np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, m)), np.empty((n, n))
    S, L, Sinv, Bm = np.empty((m, m)), np.empty((m, m)), np.empty((m, m)), np.empty((n, m))
    per_frame = noise.shape[0] > 0
    Rt = _noise_matrix(R, per_frame)
    succ, parent = np.full((capacity, 2), -1), np.empty(capacity, dtype=np.int64)
    parent[0] = -1  # the prior has none; a node's parent is set when the node is made
    count, computed = 1, 0
    for b in range(Bc):
        current = 0
        for t in range(T):
            mu = mask[b, t]
            key = 1 if mu == 1.0 else (0 if mu == 0.0 else -1)
            if per_frame:  # a step is a function of R_t too: never looked up
                key = -1
            following = succ[current, key] if key >= 0 else -1
            if following < 0:
                computed += 1
                new = count  # the step's slot, kept if it is not a settled node's
                if per_frame:
                    _set_frame_noise(Rt, noise, b, t, n)
                if n == 3:  # the generated scalar step
                    if mu == 0.0:
                        gap_step(covs[current], G, Q, covs[new], gains[new])
                    else:
                        observed_step(covs[current], mu, F, H, Q, Rt, covs[new], gains[new])
                else:
                    _riccati_step(covs[current], mu, F, G, H, Q, Rt, Pp, S, L, Sinv, Bm, gains[new], Mm, t1, n)
                    _joseph(Pp, gains[new], Mm, Rt, covs[new], t1, t2, t3, n)
                if _repeats(covs, gains, new, current, n):
                    following = current
                elif _repeats(covs, gains, new, parent[current], n):
                    following = parent[current]
                else:
                    following = new
                    count += 1
                    parent[new] = current
                if key >= 0:
                    succ[current, key] = following
            node[b, t] = following
            current = following
    return node, covs[:count], gains[:count], computed


@njit(cache=True, nogil=True, error_model="numpy")
def riccati_steps(mask, F, G, H, Q, R, noise, P0, covs, gains, size):
    """Every step of the covariance recursion, written into covs (Bc, T, n, n) and gains (Bc, T, n, m): what
    training keeps for the backward passes. The same step as `riccati_nodes` (so equal to it bit for bit) without
    looking for shared steps: a training step needs each one written out, and computing a step (~0.07 us for n = 3)
    costs less than finding it. noise: (Bc, T, m) per-frame observation-noise variances, or a leading 0 (R on every
    frame)."""
    n = len(size)
    Bc, T = mask.shape
    per_frame = noise.shape[0] > 0
    Rt = _noise_matrix(R, per_frame)
    # Two loops rather than a branch in one: the 3 x 3 loop then holds nothing but the scalar step.
    if n == 3:
        for b in range(Bc):
            for t in range(T):
                P, mu = P0 if t == 0 else covs[b, t - 1], mask[b, t]
                if per_frame:
                    _set_frame_noise(Rt, noise, b, t, n)
                if mu == 0.0:
                    gap_step(P, G, Q, covs[b, t], gains[b, t])
                else:
                    observed_step(P, mu, F, H, Q, Rt, covs[b, t], gains[b, t])
        return
    Pp, Mm, t1, t2, t3 = np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    S, L, Sinv, Bm = np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    for b in range(Bc):
        for t in range(T):
            P, K = P0 if t == 0 else covs[b, t - 1], gains[b, t]
            if per_frame:
                _set_frame_noise(Rt, noise, b, t, n)
            _riccati_step(P, mask[b, t], F, G, H, Q, Rt, Pp, S, L, Sinv, Bm, K, Mm, t1, n)
            _joseph(Pp, K, Mm, Rt, covs[b, t], t1, t2, t3, n)


def riccati_forward(mask, F, G, H, Q, R, P0, size, noise=None):
    """mask (Bc, T) of 0/1 -> filtered covariances P (Bc, T, n, n) and gains K (Bc, T, n, m) (`riccati_steps`).
    noise: (Bc, T, m) per-frame observation-noise variances, or None (R on every frame)."""
    n, (Bc, T) = len(size), mask.shape
    covs, gains = np.empty((Bc, T, n, n)), np.empty((Bc, T, n, n))
    noise = np.zeros((0, T, n)) if noise is None else noise
    riccati_steps(mask, F, G, H, Q, R, noise, P0, covs, gains, size)
    return covs, gains


@njit(cache=True, nogil=True, error_model="numpy")
def riccati_backward(mask, F, G, H, Q, R, noise, P0, covs, gains, g_covs, g_gains, size):
    """Adjoint of `riccati_forward`: g_covs (Bc, T, n, n) (or an array without rows: zero), g_gains (Bc, T, n, m)
    -> gradients w.r.t. F (n, n), G (n, n), H (m, n), Q (n, n), R (m, m) summed over the rows, w.r.t. P0 (Bc, n, n)
    per row, and w.r.t. the per-frame noise (Bc, T, m) where it is given (R's gradient is then that of the frames
    without it: zero). Each step is computed again from its input P_{t-1}: for n = 3 in the generated scalar adjoint
    (`_steps3`), otherwise in `_array_step_adjoint`."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    Bc, T = mask.shape
    per_frame = noise.shape[0] > 0
    with_covs = g_covs.shape[0] > 0
    g_noise = np.zeros(noise.shape)
    Rt = _noise_matrix(R, per_frame)
    gF, gH, gQ, gR, gG = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    gRt = np.zeros((n, n))  # the step's adjoint of R_t where it is per frame (else it adds into gR)
    gP0 = np.zeros((Bc, n, n))
    X, gP, work = np.empty((n, n)), np.zeros((n, n)), np.empty((18, n, n))
    for b in range(Bc):
        gP[:] = 0.0
        for t in range(T - 1, -1, -1):
            P, mu = P0 if t == 0 else covs[b, t - 1], mask[b, t]
            for i in range(n):  # the adjoint of P_t: from the next step and from the output
                for k in range(n):
                    X[i, k] = gP[i, k] + g_covs[b, t, i, k] if with_covs else gP[i, k]
            if per_frame:
                _set_frame_noise(Rt, noise, b, t, n)
                gRt[:] = 0.0
            gR_t = gRt if per_frame else gR
            # n is a compile-time constant (the length of size): the branches on it fold away.
            if n == 3 and mu == 0.0:  # K = 0 whatever its adjoint
                gap_step_adjoint(P, G, Q, X, gP, gG, gQ)
            elif n == 3:
                observed_step_adjoint(P, mu, F, H, Q, Rt, X, g_gains[b, t], gP, gF, gH, gQ, gR_t)
            else:
                _array_step_adjoint(P, mu, F, G, H, Q, Rt, X, g_gains[b, t], gP, gF, gG, gH, gQ, gR_t, work, n)
            if per_frame:  # R_t = diag(noise[b, t])
                for i in range(n):
                    g_noise[b, t, i] = gRt[i, i]
        gP0[b] = gP
    return gF, gG, gH, gQ, gR, gP0, g_noise


@njit(cache=True, inline="always", error_model="numpy")
def _array_step_adjoint(P, mu, F, G, H, Q, R, X, gK_out, gP, gF, gG, gH, gQ, gR, work, n):
    """Adjoint of one covariance step on arrays (any n): from X (the adjoint of P_t) and gK_out (of K_t) sets gP
    (of P_{t-1}) and adds into gF, gG, gH, gQ, gR. work: (18, n, n) scratch (m = n)."""
    m = n
    Pp, Mm, Sinv, K, t1, S, L, Bm = work[0], work[1], work[2], work[3], work[4], work[5], work[6], work[7]
    t2, W, gM, gPp, u1, gK, gKS, gS = work[8], work[9], work[10], work[11], work[12], work[13], work[14], work[15]
    u2, u3 = work[16], work[17]
    _riccati_step(P, mu, F, G, H, Q, R, Pp, S, L, Sinv, Bm, K, Mm, t1, n)
    for i in range(n):  # through P_t = sym(M P^ M^T + K R K^T)
        for k in range(n):
            W[i, k] = 0.5 * (X[i, k] + X[k, i])
    _joseph_adjoint(W, Mm, Pp, K, R, gM, gPp, gK, gR, u1, t2, u2, n)
    for i in range(n):
        for k in range(m):
            gK[i, k] += gK_out[i, k]
    _mm_nt(gM, H, t2, n)  # M = I - K H: gK -= gM H^T; gH -= K^T gM
    _mm_tn(K, gM, u3, n)
    for i in range(n):
        for k in range(m):
            gK[i, k] = mu * (gK[i, k] - t2[i, k])  # K = mu B S^-1
    for i in range(m):
        for k in range(n):
            gH[i, k] -= u3[i, k]
    _gain_adjoint(gK, K, Sinv, H, Pp, gPp, gH, gR, gKS, gS, t1, u3, mu, n)
    A, gA = (G, gG) if mu == 0.0 else (F, gF)  # the step's transition: the gap step's G where mu = 0
    for i in range(n):  # P^ = sym(A P A^T + Q)
        for k in range(n):
            W[i, k] = 0.5 * (gPp[i, k] + gPp[k, i])
            gQ[i, k] += W[i, k]
    _mm(W, A, t1, n)
    _mm(t1, P, u1, n)  # gA += 2 W A P
    for i in range(n):
        for k in range(n):
            gA[i, k] += 2.0 * u1[i, k]
    _mm_tn(A, t1, gP, n)  # adjoint into P_{t-1}: A^T W A


@njit(cache=True, nogil=True, error_model="numpy")
def state_forward(obs, mask, node, gains, F, HF, G, c, z0, size):
    """obs (B, T, m), mask (Bc, T), gains (N, n, m) and node (Bc, T) with Bc = 1 or B, the gain of each step
    (`riccati_nodes`) -> states (B, T, n): z_t = F z_{t-1} + K_t (o_t - HF z_{t-1}), K_t = gains[node[row, t]];
    where mask is 0, the gap step z_t = G z_{t-1} + c. For n = 3, `_state_forward3` (equal bit for bit)."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    if n == 3:
        return _state_forward3(obs, mask, node, gains, F, HF, G, c, z0)
    B, T, m = obs.shape[0], obs.shape[1], n
    shared = node.shape[0] == 1
    states = np.empty((B, T, n))
    v = np.empty(m)
    for b in range(B):
        row = 0 if shared else b
        for t in range(T):
            z = z0 if t == 0 else states[b, t - 1]
            out = states[b, t]
            if mask[row, t] == 0.0:
                for i in range(n):
                    s = c[i]
                    for k in range(n):
                        s += G[i, k] * z[k]
                    out[i] = s
                continue
            K = gains[node[row, t]]
            for i in range(m):
                s = obs[b, t, i]
                for k in range(n):
                    s -= HF[i, k] * z[k]
                v[i] = s
            for i in range(n):
                s = 0.0
                for k in range(n):
                    s += F[i, k] * z[k]
                for k in range(m):
                    s += K[i, k] * v[k]
                out[i] = s
    return states


@njit(cache=True, nogil=True, error_model="numpy")
def state_backward(obs, mask, gains, F, HF, G, c, z0, states, g_states, size):
    """Adjoint of `state_forward`: g_states (B, T, n) -> gradients w.r.t. obs (B, T, m), gains (Bc, T, n, m) (summed
    over the sequences sharing a row), F (n, n), HF (m, n), G (n, n), c (n,) and z0 (n,). For n = 3,
    `_state_backward3` (equal bit for bit)."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    if n == 3:
        return _state_backward3(obs, mask, gains, F, HF, G, c, z0, states, g_states)
    B, T, m = obs.shape[0], obs.shape[1], n
    shared = gains.shape[0] == 1
    g_obs = np.empty((B, T, m))
    g_gains = np.zeros(gains.shape)
    gF, gHF, gz0 = np.zeros((n, n)), np.zeros((m, n)), np.zeros(n)
    gG, gc = np.zeros((n, n)), np.zeros(n)
    lam, carry, v, w = np.empty(n), np.zeros(n), np.empty(m), np.empty(m)
    for b in range(B):
        row = 0 if shared else b
        carry[:] = 0.0
        for t in range(T - 1, -1, -1):
            z = z0 if t == 0 else states[b, t - 1]
            K = gains[row, t]
            for i in range(n):
                lam[i] = g_states[b, t, i] + carry[i]
            if mask[row, t] == 0.0:  # z_t = G z_{t-1} + c
                for i in range(m):
                    g_obs[b, t, i] = 0.0
                for i in range(n):
                    gc[i] += lam[i]
                    for k in range(n):
                        gG[i, k] += lam[i] * z[k]
                for k in range(n):
                    s = 0.0
                    for i in range(n):
                        s += G[i, k] * lam[i]
                    carry[k] = s
                continue
            for i in range(m):
                s = obs[b, t, i]
                for k in range(n):
                    s -= HF[i, k] * z[k]
                v[i] = s
                s = 0.0
                for k in range(n):
                    s += K[k, i] * lam[k]
                w[i] = s  # K^T lambda: the gradient of o_t
                g_obs[b, t, i] = s
            for i in range(n):
                for k in range(m):
                    g_gains[row, t, i, k] += lam[i] * v[k]
                for k in range(n):
                    gF[i, k] += lam[i] * z[k]
            for i in range(m):
                for k in range(n):
                    gHF[i, k] -= w[i] * z[k]
            for k in range(n):  # into z_{t-1}: F^T lambda - HF^T w
                s = 0.0
                for i in range(n):
                    s += F[i, k] * lam[i]
                for i in range(m):
                    s -= HF[i, k] * w[i]
                carry[k] = s
        for k in range(n):
            gz0[k] += carry[k]
    return g_obs, g_gains, gF, gHF, gG, gc, gz0


# The state recursion for n = 3 with the state and its adjoint in scalars (registers) from step to step instead of
# small arrays: the same operations in the same order as the loops above (so equal to them bit for bit), ~5x faster.


@njit(cache=True, nogil=True, error_model="numpy")
def _state_forward3(obs, mask, node, gains, F, HF, G, c, z0):
    B, T = obs.shape[0], obs.shape[1]
    shared = node.shape[0] == 1
    states = np.empty((B, T, 3))
    for b in range(B):
        row = 0 if shared else b
        x0, x1, x2 = z0[0], z0[1], z0[2]
        for t in range(T):
            if mask[row, t] == 0.0:
                y0 = c[0] + G[0, 0] * x0 + G[0, 1] * x1 + G[0, 2] * x2
                y1 = c[1] + G[1, 0] * x0 + G[1, 1] * x1 + G[1, 2] * x2
                y2 = c[2] + G[2, 0] * x0 + G[2, 1] * x1 + G[2, 2] * x2
            else:
                K = gains[node[row, t]]
                v0 = obs[b, t, 0] - HF[0, 0] * x0 - HF[0, 1] * x1 - HF[0, 2] * x2
                v1 = obs[b, t, 1] - HF[1, 0] * x0 - HF[1, 1] * x1 - HF[1, 2] * x2
                v2 = obs[b, t, 2] - HF[2, 0] * x0 - HF[2, 1] * x1 - HF[2, 2] * x2
                y0 = F[0, 0] * x0 + F[0, 1] * x1 + F[0, 2] * x2 + K[0, 0] * v0 + K[0, 1] * v1 + K[0, 2] * v2
                y1 = F[1, 0] * x0 + F[1, 1] * x1 + F[1, 2] * x2 + K[1, 0] * v0 + K[1, 1] * v1 + K[1, 2] * v2
                y2 = F[2, 0] * x0 + F[2, 1] * x1 + F[2, 2] * x2 + K[2, 0] * v0 + K[2, 1] * v1 + K[2, 2] * v2
            states[b, t, 0], states[b, t, 1], states[b, t, 2] = y0, y1, y2
            x0, x1, x2 = y0, y1, y2
    return states


@njit(cache=True, nogil=True, error_model="numpy")
def _state_backward3(obs, mask, gains, F, HF, G, c, z0, states, g_states):
    B, T = obs.shape[0], obs.shape[1]
    shared = gains.shape[0] == 1
    g_obs = np.empty((B, T, 3))
    g_gains = np.zeros(gains.shape)
    gF, gHF, gG = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    gc, gz0, x = np.zeros(3), np.zeros(3), np.empty(3)
    for b in range(B):
        row = 0 if shared else b
        r0 = r1 = r2 = 0.0  # the adjoint carried into z_{t-1}
        for t in range(T - 1, -1, -1):
            z = z0 if t == 0 else states[b, t - 1]
            x[0], x[1], x[2] = z[0], z[1], z[2]
            l0, l1, l2 = g_states[b, t, 0] + r0, g_states[b, t, 1] + r1, g_states[b, t, 2] + r2
            if mask[row, t] == 0.0:  # z_t = G z_{t-1} + c
                g_obs[b, t, 0] = g_obs[b, t, 1] = g_obs[b, t, 2] = 0.0
                gc[0] += l0
                gc[1] += l1
                gc[2] += l2
                for k in range(3):
                    gG[0, k] += l0 * x[k]
                    gG[1, k] += l1 * x[k]
                    gG[2, k] += l2 * x[k]
                r0 = G[0, 0] * l0 + G[1, 0] * l1 + G[2, 0] * l2
                r1 = G[0, 1] * l0 + G[1, 1] * l1 + G[2, 1] * l2
                r2 = G[0, 2] * l0 + G[1, 2] * l1 + G[2, 2] * l2
                continue
            K = gains[row, t]
            v0 = obs[b, t, 0] - HF[0, 0] * x[0] - HF[0, 1] * x[1] - HF[0, 2] * x[2]
            v1 = obs[b, t, 1] - HF[1, 0] * x[0] - HF[1, 1] * x[1] - HF[1, 2] * x[2]
            v2 = obs[b, t, 2] - HF[2, 0] * x[0] - HF[2, 1] * x[1] - HF[2, 2] * x[2]
            w0 = K[0, 0] * l0 + K[1, 0] * l1 + K[2, 0] * l2  # K^T lambda: the gradient of o_t
            w1 = K[0, 1] * l0 + K[1, 1] * l1 + K[2, 1] * l2
            w2 = K[0, 2] * l0 + K[1, 2] * l1 + K[2, 2] * l2
            g_obs[b, t, 0], g_obs[b, t, 1], g_obs[b, t, 2] = w0, w1, w2
            gK = g_gains[row, t]
            for k, vk in enumerate((v0, v1, v2)):
                gK[0, k] += l0 * vk
                gK[1, k] += l1 * vk
                gK[2, k] += l2 * vk
            for k in range(3):
                gF[0, k] += l0 * x[k]
                gF[1, k] += l1 * x[k]
                gF[2, k] += l2 * x[k]
                gHF[0, k] -= w0 * x[k]
                gHF[1, k] -= w1 * x[k]
                gHF[2, k] -= w2 * x[k]
            # into z_{t-1}: F^T lambda - HF^T w
            r0 = F[0, 0] * l0 + F[1, 0] * l1 + F[2, 0] * l2 - HF[0, 0] * w0 - HF[1, 0] * w1 - HF[2, 0] * w2
            r1 = F[0, 1] * l0 + F[1, 1] * l1 + F[2, 1] * l2 - HF[0, 1] * w0 - HF[1, 1] * w1 - HF[2, 1] * w2
            r2 = F[0, 2] * l0 + F[1, 2] * l1 + F[2, 2] * l2 - HF[0, 2] * w0 - HF[1, 2] * w1 - HF[2, 2] * w2
        gz0[0] += r0
        gz0[1] += r1
        gz0[2] += r2
    return g_obs, g_gains, gF, gHF, gG, gc, gz0


# The whole filter, state and covariance in one step, for sequences that each have their own covariances (frames
# without a face, or each frame its own observation noise) and n = 3: LANES sequences side by side in the generated
# lane step (`_steps3.lanes_kf_step`), whose loop over the lanes the compiler turns into vector instructions. A
# group's P_t and z_t are kept lane by lane, (T, 12, LANES) per group, for the backward pass; no gain is written.

SAVED = 12 * LANES  # a group's P_t (9 entries) then z_t (3) per lane, as the lane step's slots hold them
# The kernels copy P and z (and their outputs and adjoints) as one block of slots.
assert LANES_KF_Z == LANES_KF_P + 9 * LANES and LANES_KF_Z_OUT == LANES_KF_P_OUT + 9 * LANES
assert LANES_KF_GZ == LANES_KF_GP + 9 * LANES and LANES_KF_GZ_OUT == LANES_KF_GP_OUT + 9 * LANES


@njit(cache=True, inline="always", error_model="numpy")
def _lanes_prior(buf, P0, z0):
    """Every lane's P and z at the prior."""
    for lane in range(LANES):
        for e in range(9):
            buf[LANES_KF_P + e * LANES + lane] = P0[e // 3, e % 3]
        for i in range(3):
            buf[LANES_KF_P + (9 + i) * LANES + lane] = z0[i]


@njit(cache=True, inline="always", error_model="numpy")
def _lanes_noise(buf, R):
    """R's diagonal in every lane (where each frame has its own, `_lanes_frame` replaces it frame by frame)."""
    for lane in range(LANES):
        for i in range(3):
            buf[LANES_KF_R + i * LANES + lane] = R[i, i]


@njit(cache=True, inline="always", error_model="numpy")
def _lanes_frame(buf, obs, mask, noise, first, last, t):
    """Frame t of rows first..last - 1 into the lanes: mu, o (0 without a face: never read, and a NaN there stays
    out) and R_t's diagonal where each frame has its own. A lane past `last` repeats the last row (its results are
    dropped)."""
    for lane in range(LANES):
        b = min(first + lane, last - 1)
        mu = mask[b, t]
        buf[LANES_KF_MU + lane] = mu
        for i in range(3):
            buf[LANES_KF_O + i * LANES + lane] = obs[b, t, i] if mu != 0.0 else 0.0
            if noise.shape[0] > 0:
                buf[LANES_KF_R + i * LANES + lane] = noise[b, t, i]


@njit(cache=True, nogil=True, error_model="numpy")
def filter_lanes_forward(obs, mask, F, G, HF, c, H, Q, R, noise, z0, P0, states, covs, saved):
    """The linear filter for n = 3 on rows of their own: obs (B, T, 3), mask (B, T) -> states (B, T, 3) and covs
    (B, T, 3, 3) written in their dtype, saved (ceil(B / LANES), T, SAVED) float64 for `filter_lanes_backward`.
    noise: (B, T, 3) per-frame observation-noise variances, or a leading 0 (R on every frame). Equal bit for bit to
    `riccati_nodes` then `state_forward` on the same rows. Two shorter steps give the whole step's values where
    they apply: where no lane has a face, the predict step (`lanes_kf_step_gap`); where every lane has a face and
    its last step, with a face, gave back its P bit for bit (a settled covariance; not with per-frame noise, where
    R_t changes the step), the same P and gain again, so that only the state recursion runs
    (`lanes_kf_step_settled`). Returns the number of steps whose update was left out (the two kinds together)."""
    B, T = mask.shape
    per_frame = noise.shape[0] > 0
    buf = np.zeros(LANES_KF_SLOTS * LANES)
    _lanes_noise(buf, R)
    left_out = 0
    for group in range(saved.shape[0]):
        first, last = group * LANES, min(group * LANES + LANES, B)
        _lanes_prior(buf, P0, z0)
        settled = False  # every lane's last step had a face and gave back its P
        for t in range(T):
            _lanes_frame(buf, obs, mask, noise, first, last, t)
            with_faces = _every_lane(buf, 1.0)
            if settled and with_faces:
                lanes_kf_step_settled(buf, HF, F, G, c)
                for e in range(9 * LANES):
                    buf[LANES_KF_P_OUT + e] = buf[LANES_KF_P + e]
                left_out += 1
            elif _every_lane(buf, 0.0):
                lanes_kf_step_gap(buf, HF, H, Q, F, G, c)
                settled = False
                left_out += 1
            else:
                lanes_kf_step(buf, HF, H, Q, F, G, c)
                settled = with_faces and not per_frame and _gave_back_p(buf)
            kept = saved[group, t]
            for e in range(SAVED):  # P_t and z_t: kept, and the next step's input
                kept[e] = buf[LANES_KF_P + e] = buf[LANES_KF_P_OUT + e]
            for lane in range(last - first):
                for i in range(3):
                    for k in range(3):
                        covs[first + lane, t, i, k] = buf[LANES_KF_P_OUT + (3 * i + k) * LANES + lane]
                    states[first + lane, t, i] = buf[LANES_KF_P_OUT + (9 + i) * LANES + lane]
    return left_out


@njit(cache=True, inline="always", error_model="numpy")
def _every_lane(buf, mu):
    """Whether every lane's mask value is mu (1: a face in every lane; 0: in none)."""
    for lane in range(LANES):
        if buf[LANES_KF_MU + lane] != mu:
            return False
    return True


@njit(cache=True, inline="always", error_model="numpy")
def _gave_back_p(buf):
    """Whether the step's P_out equals its input P in every lane, bit for bit (NaN never does)."""
    for e in range(9 * LANES):
        if buf[LANES_KF_P_OUT + e] != buf[LANES_KF_P + e]:
            return False
    return True


@njit(cache=True, inline="always", error_model="numpy")
def _zero_or_one(buf):
    """Whether every lane's mask value is 0 or 1 (fractional values weigh the gain)."""
    for lane in range(LANES):
        mu = buf[LANES_KF_MU + lane]
        if mu != 0.0 and mu != 1.0:
            return False
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def filter_lanes_backward(obs, mask, F, G, HF, c, H, Q, R, noise, z0, P0, saved, g_states, g_covs):
    """Adjoint of `filter_lanes_forward`: g_states (B, T, 3) and g_covs (B, T, 3, 3) (or an array without rows: zero)
    -> gradients w.r.t. obs (B, T, 3) (0 without a face), F, G, HF, H, Q, R (3, 3), c (3,), z0 (3,), P0 (3, 3) and
    the per-frame noise (B, T, 3) where it is given (R's gradient is then zero). Each step is computed again from
    its saved input (P_{t-1}, z_{t-1}); each lane keeps its own sums, added over the rows at the end."""
    B, T = mask.shape
    per_frame = noise.shape[0] > 0
    with_covs = g_covs.shape[0] > 0
    g_obs, g_noise = np.empty((B, T, 3), obs.dtype), np.zeros(noise.shape)  # every frame of g_obs is written
    gF, gG, gHF, gH = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    gQ, gR, gP0 = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    gc, gz0 = np.zeros(3), np.zeros(3)
    buf = np.zeros(LANES_KF_SLOTS * LANES)
    _lanes_noise(buf, R)
    sums = np.zeros((4, 9 * LANES))  # per lane: the adjoints of F, of G, of c and of R's diagonal
    for group in range(saved.shape[0]):
        first, last = group * LANES, min(group * LANES + LANES, B)
        buf[LANES_KF_GP : LANES_KF_GP + SAVED] = 0.0  # the adjoints of P_T and z_T from after the last step
        buf[LANES_KF_GH : LANES_KF_GH + 9 * LANES] = 0.0
        buf[LANES_KF_GHF : LANES_KF_GHF + 9 * LANES] = 0.0
        buf[LANES_KF_GQ : LANES_KF_GQ + 3 * LANES] = 0.0
        sums[:] = 0.0
        for t in range(T - 1, -1, -1):
            _lanes_frame(buf, obs, mask, noise, first, last, t)
            if t == 0:
                _lanes_prior(buf, P0, z0)
            else:
                kept = saved[group, t - 1]
                for e in range(SAVED):
                    buf[LANES_KF_P + e] = kept[e]
            for e in range(SAVED):  # the adjoints of P_t and z_t from step t + 1, then from the outputs
                buf[LANES_KF_GP_OUT + e] = buf[LANES_KF_GP + e]
            for lane in range(last - first):
                b = first + lane
                for i in range(3):
                    buf[LANES_KF_GP_OUT + (9 + i) * LANES + lane] += g_states[b, t, i]
                    if with_covs:
                        for k in range(3):
                            buf[LANES_KF_GP_OUT + (3 * i + k) * LANES + lane] += g_covs[b, t, i, k]
            if _every_lane(buf, 0.0):  # the predict step's adjoint (`lanes_kf_step_gap`)
                lanes_kf_step_adjoint_gap(buf, HF, H, Q, F, G, c)
            elif _zero_or_one(buf):  # every lane's gain is 0 or the optimal one: the shorter adjoint, the same values
                lanes_kf_step_adjoint_at_optimum(buf, HF, H, Q, F, G, c)
            else:
                lanes_kf_step_adjoint(buf, HF, H, Q, F, G, c)
            for e in range(9 * LANES):  # the step's transition: F with a face, G without
                gA = buf[LANES_KF_GF + e]
                observed = buf[LANES_KF_MU + e % LANES] != 0.0
                sums[0, e] += gA if observed else 0.0
                sums[1, e] += 0.0 if observed else gA
            for e in range(3 * LANES):  # c: read without a face only
                sums[2, e] += 0.0 if buf[LANES_KF_MU + e % LANES] != 0.0 else buf[LANES_KF_GC + e]
                if not per_frame:
                    sums[3, e] += buf[LANES_KF_GR + e]
            for lane in range(last - first):
                for i in range(3):
                    g_obs[first + lane, t, i] = buf[LANES_KF_GO + i * LANES + lane]
                    if per_frame:
                        g_noise[first + lane, t, i] = buf[LANES_KF_GR + i * LANES + lane]
        for lane in range(last - first):
            for i in range(3):
                for k in range(3):
                    e = (3 * i + k) * LANES + lane
                    gF[i, k] += sums[0, e]
                    gG[i, k] += sums[1, e]
                    gHF[i, k] += buf[LANES_KF_GHF + e]
                    gH[i, k] += buf[LANES_KF_GH + e]
                    gP0[i, k] += buf[LANES_KF_GP + e]
                gc[i] += sums[2, i * LANES + lane]
                gR[i, i] += sums[3, i * LANES + lane]
                gQ[i, i] += buf[LANES_KF_GQ + i * LANES + lane]
                gz0[i] += buf[LANES_KF_GP + (9 + i) * LANES + lane]
    return g_obs, gF, gG, gHF, gH, gQ, gR, gc, gz0, gP0, g_noise
