"""Compiled (numba) kernels of the linear Kalman filter split in two recursions, each with a hand-derived backward.

For the linear filter the covariance recursion (the Riccati equation) does not look at the observations:

    P^_t = F P_{t-1} F^T + Q;  S_t = H P^_t H^T + R;  K_t = mu_t P^_t H^T S_t^-1;
    P_t = (I - K_t H) P^_t (I - K_t H)^T + K_t R K_t^T   (Joseph form, symmetrised)

depends only on the mask mu_t (1 = observed, 0 = predict only). Without missing frames one recursion serves the
whole batch; the state recursion is then a cheap linear time-varying recurrence per sequence:

    z_t = F z_{t-1} + K_t (o_t - HF z_{t-1}).

A predict-only step (mu_t = 0) uses the gap transition instead of F (`BayesFilter.gap_transition`):
P_t = G P_{t-1} G^T + Q and z_t = G z_{t-1} + c.

The covariance recursion has one row for the whole batch (`Bc = 1`, no missing frames) or one per sequence; its
distinct steps are kept once (`riccati_nodes`), the state recursion reads each step's gain through the node index,
and training gathers them per step (`riccati_forward`) for the backward passes. Arrays are float64 and C-contiguous
(B batch, Bc covariance rows, T steps, n state, m observation). All kernels release the GIL, so callers may run
slices of the batch on several threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from affect_core.filters._kernels import (
    _frame_noise,
    _gain_adjoint,
    _joseph,
    _joseph_adjoint,
    _mm,
    _mm_nt,
    _mm_tn,
    _spd_inverse,
    _sym,
    _unobserved,
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


@njit(cache=True, nogil=True, error_model="numpy")
def riccati_nodes(mask, F, G, H, Q, R, noise, P0, step_covs, step_gains, size):
    """mask (Bc, T) of 0/1 -> node (Bc, T): the node holding each step's (P_t, K_t); the nodes' covariances
    (count, n, n) and gains (count, n, m); and the number of steps computed (the others were shared). When
    step_covs (Bc, T, n, n) and step_gains (Bc, T, n, m) have rows, each step's covariance and gain are also copied
    there as the step is reached (`riccati_forward`); inference passes them without rows.

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
    Pp, Mm, t1, t3 = np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    S, L, Sinv = np.empty((m, m)), np.empty((m, m)), np.empty((m, m))
    Bm, t2, Rt = np.empty((n, m)), np.empty((n, m)), np.empty((m, m))
    per_frame = noise.shape[0] > 0
    succ, parent = np.full((capacity, 2), -1), np.empty(capacity, dtype=np.int64)
    parent[0] = -1  # the prior has none; a node's parent is set when the node is made
    count, computed = 1, 0
    per_step = step_covs.shape[0] > 0
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
                R_t = _frame_noise(R, noise, b, t, Rt, n)
                _riccati_step(covs[current], mu, F, G, H, Q, R_t, Pp, S, L, Sinv, Bm, gains[new], Mm, t1, n)
                _joseph(Pp, gains[new], Mm, R_t, covs[new], t1, t2, t3, n)
                for earlier in (current, parent[current]):
                    if earlier > 0 and _same(covs[new], covs[earlier], n) and _same(gains[new], gains[earlier], n):
                        following = earlier
                        break
                if following < 0:
                    following = new
                    count += 1
                    parent[new] = current
                if key >= 0:
                    succ[current, key] = following
            node[b, t] = following
            current = following
            if per_step:
                for i in range(n):
                    for k in range(n):
                        step_covs[b, t, i, k] = covs[following, i, k]
                        step_gains[b, t, i, k] = gains[following, i, k]
    return node, covs[:count], gains[:count], computed


def riccati_forward(mask, F, G, H, Q, R, P0, size, noise=None):
    """mask (Bc, T) of 0/1 -> filtered covariances P (Bc, T, n, n), gains K (Bc, T, n, m) and the number of steps
    computed: the steps of `riccati_nodes`, written out one by one (copying a computed step is exact). noise:
    (Bc, T, m) per-frame observation-noise variances, or None (R on every frame)."""
    n, (Bc, T) = len(size), mask.shape
    covs, gains = np.empty((Bc, T, n, n)), np.empty((Bc, T, n, n))
    noise = np.zeros((0, T, n)) if noise is None else noise
    computed = riccati_nodes(mask, F, G, H, Q, R, noise, P0, covs, gains, size)[3]
    return covs, gains, computed


@njit(cache=True, nogil=True, error_model="numpy")
def riccati_backward(mask, F, G, H, Q, R, noise, P0, covs, gains, g_covs, g_gains, size):
    """Adjoint of `riccati_forward`: g_covs (Bc, T, n, n), g_gains (Bc, T, n, m) -> gradients w.r.t. F (n, n),
    G (n, n), H (m, n), Q (n, n), R (m, m) summed over the rows, w.r.t. P0 (Bc, n, n) per row, and w.r.t. the
    per-frame noise (Bc, T, m) where it is given (R's gradient is then that of the frames without it: zero)."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    Bc, T = mask.shape
    m = n
    per_frame = noise.shape[0] > 0
    g_noise = np.zeros(noise.shape)
    Rt, gRt = np.empty((m, m)), np.zeros((m, m))
    gF, gH, gQ, gR = np.zeros((n, n)), np.zeros((m, n)), np.zeros((n, n)), np.zeros((m, m))
    gG = np.zeros((n, n))
    gP0 = np.zeros((Bc, n, n))
    t1 = np.empty((n, n))
    S, L = np.empty((m, m)), np.empty((m, m))
    Bm, t2 = np.empty((n, m)), np.empty((n, m))
    W, gM, gPp, u1 = np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    gK, gKS = np.empty((n, m)), np.empty((n, m))
    gS, u2 = np.empty((m, m)), np.empty((m, m))
    u3 = np.empty((m, n))
    gP = np.zeros((n, n))
    # The intermediates of the last two distinct steps, keyed by their input (row of covs, -1 = P0) and mu: in a
    # settled stretch the step's input repeats and its intermediates need not be recomputed (see riccati_forward).
    Pp2, Mm2, Sinv2, K2 = np.empty((2, n, n)), np.empty((2, n, n)), np.empty((2, m, m)), np.empty((2, n, m))
    key_row, key_mu = np.full(2, -2), np.zeros(2)
    for b in range(Bc):
        gP[:] = 0.0
        key_row[:] = -2
        older = 0
        for t in range(T - 1, -1, -1):
            P = P0 if t == 0 else covs[b, t - 1]
            mu = mask[b, t]
            R_t = _frame_noise(R, noise, b, t, Rt, n)
            gR_t = gRt if per_frame else gR  # the step's adjoint of R_t: per frame, or summed into R's
            if per_frame:
                gRt[:] = 0.0
            slot = -1
            for j in range(2):
                if not per_frame and key_row[j] >= -1 and key_mu[j] == mu:  # R_t per frame: always recomputed
                    P_key = P0 if key_row[j] == -1 else covs[b, key_row[j]]
                    if _same(P, P_key, n):
                        slot = j
            if slot < 0:
                slot = older
                older = 1 - older
                key_row[slot], key_mu[slot] = t - 1, mu
                _riccati_step(P, mu, F, G, H, Q, R_t, Pp2[slot], S, L, Sinv2[slot], Bm, K2[slot], Mm2[slot], t1, n)
            Pp, Mm, Sinv, K = Pp2[slot], Mm2[slot], Sinv2[slot], K2[slot]
            for i in range(n):  # through P_t = sym(M P^ M^T + K R K^T)
                for k in range(n):
                    W[i, k] = 0.5 * (gP[i, k] + gP[k, i] + g_covs[b, t, i, k] + g_covs[b, t, k, i])
            _joseph_adjoint(W, Mm, Pp, K, R_t, gM, gPp, gK, gR_t, u1, t2, u2, n)
            for i in range(n):
                for k in range(m):
                    gK[i, k] += g_gains[b, t, i, k]
            _mm_nt(gM, H, t2, n)  # M = I - K H: gK -= gM H^T; gH -= K^T gM
            _mm_tn(K, gM, u3, n)
            for i in range(n):
                for k in range(m):
                    gK[i, k] = mu * (gK[i, k] - t2[i, k])  # K = mu B S^-1
            for i in range(m):
                for k in range(n):
                    gH[i, k] -= u3[i, k]
            _gain_adjoint(gK, K, Sinv, H, Pp, gPp, gH, gR_t, gKS, gS, t1, u3, n)
            if per_frame:  # R_t = diag(noise[b, t])
                for i in range(m):
                    g_noise[b, t, i] = gRt[i, i]
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
        gP0[b] = gP
    return gF, gG, gH, gQ, gR, gP0, g_noise


@njit(cache=True, nogil=True, error_model="numpy")
def state_forward(obs, mask, node, gains, F, HF, G, c, z0, size):
    """obs (B, T, m), mask (Bc, T), gains (N, n, m) and node (Bc, T) with Bc = 1 or B, the gain of each step
    (`riccati_nodes`) -> states (B, T, n): z_t = F z_{t-1} + K_t (o_t - HF z_{t-1}), K_t = gains[node[row, t]];
    where mask is 0, the gap step z_t = G z_{t-1} + c."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
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
    over the sequences sharing a row), F (n, n), HF (m, n), G (n, n), c (n,) and z0 (n,)."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
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
