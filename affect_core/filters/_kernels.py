"""Compiled (numba) forward and hand-derived backward of the (extended) Kalman filter recursion, one CPU loop.

The recursion is sequential in time, so a step of the EKF is a few hundred flops on 3x3 (or 6x6) matrices; as
dozens of tensor operations per frame it would be dominated by dispatch overhead. Here each sequence of the batch is
one compiled loop (the caller cuts the batch into slices for its threads); the forward pass keeps each step's
predicted covariance, gain and inverse innovation covariance, and the backward pass applies the adjoint of every
line of the step in reverse from them. `linear=True` turns the step into the plain Kalman filter (f(z) = W_f z,
h(z) = W_h z, Jacobians W_f, W_h). A predict-only step (mask 0) uses the gap transition z^ = G z + c (Jacobian G)
in place of f (`BayesFilter.gap_transition`).

Arrays are float64 and C-contiguous; shapes in the function docstrings (B batch, T steps, n state, m observation,
m = n in this model family). The last argument of each kernel, `size`, is a tuple of n zeros: its length is a
compile-time constant, so every n gets its own machine code with the n x n loops unrolled (about 3x faster than
loops over run-time bounds).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from affect_core.filters._steps3 import ekf_gap_step, ekf_gap_step_adjoint, ekf_observed_step, ekf_observed_step_adjoint


@njit(cache=True, inline="always", error_model="numpy")
def _mm(A, B, out, n):  # out = A @ B
    for i in range(n):
        for j in range(n):
            s = 0.0
            for k in range(n):
                s += A[i, k] * B[k, j]
            out[i, j] = s


@njit(cache=True, inline="always", error_model="numpy")
def _mm_nt(A, B, out, n):  # out = A @ B^T
    for i in range(n):
        for j in range(n):
            s = 0.0
            for k in range(n):
                s += A[i, k] * B[j, k]
            out[i, j] = s


@njit(cache=True, inline="always", error_model="numpy")
def _mm_tn(A, B, out, n):  # out = A^T @ B
    for i in range(n):
        for j in range(n):
            s = 0.0
            for k in range(n):
                s += A[k, i] * B[k, j]
            out[i, j] = s


@njit(cache=True, inline="always", error_model="numpy")
def _sym(A, n):  # in place (A + A^T) / 2
    for i in range(n):
        for j in range(i + 1, n):
            v = 0.5 * (A[i, j] + A[j, i])
            A[i, j] = v
            A[j, i] = v


@njit(cache=True, inline="always", error_model="numpy")
def _spd_inverse(S, L, out, n):
    """out = S^-1 for symmetric positive definite S via its Cholesky factor L (S = L L^T)."""
    m = n
    for i in range(m):
        for j in range(i + 1):
            s = S[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            if i == j:
                L[i, i] = np.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
        for j in range(i + 1, m):
            L[i, j] = 0.0
    # Solve L Y = I then L^T X = Y, column by column.
    for c in range(m):
        for i in range(m):
            s = 1.0 if i == c else 0.0
            for k in range(i):
                s -= L[i, k] * out[k, c]
            out[i, c] = s / L[i, i]
        for i in range(m - 1, -1, -1):
            s = out[i, c]
            for k in range(i + 1, m):
                s -= L[k, i] * out[k, c]
            out[i, c] = s / L[i, i]
    _sym(out, n)


@njit(cache=True, inline="always", error_model="numpy")
def _unobserved(Sinv, K, Mm, n):
    """The gain intermediates of a predict-only step: S^-1 = 0, K = 0, M = I (what mu = 0 makes of the update,
    without forming S, which after a long gap can be too ill-conditioned to factor)."""
    for i in range(n):
        for k in range(n):
            Sinv[i, k] = 0.0
            K[i, k] = 0.0
            Mm[i, k] = 1.0 if i == k else 0.0


@njit(cache=True, inline="always", error_model="numpy")
def _step(
    z, P, o, mu, Wf, bf, Wh, bh, Q, R, G, c, linear, zp, d, Jf, Pp, hz, e, Jh, Bm, S, L, Sinv, K, v, Mm, t1, t2, n
):
    """One predict-then-update step from (z, P); fills the intermediates (all preallocated). Where mu = 0 the
    transition is the gap step's (G, c), linear."""
    m = n
    gap = mu == 0.0
    A, a0 = (G, c) if gap else (Wf, bf)
    for i in range(n):  # a = W_f z + b_f; z^ = tanh(a); J_f = diag(1 - z^2) W_f
        s = a0[i]
        for k in range(n):
            s += A[i, k] * z[k]
        if linear or gap:
            zp[i] = s
            d[i] = 1.0
        else:
            zp[i] = np.tanh(s)
            d[i] = 1.0 - zp[i] * zp[i]
        for k in range(n):
            Jf[i, k] = d[i] * A[i, k]
    _mm(Jf, P, t1, n)  # P^ = J_f P J_f^T + Q
    _mm_nt(t1, Jf, Pp, n)
    for i in range(n):
        for k in range(n):
            Pp[i, k] += Q[i, k]
    _sym(Pp, n)
    for i in range(m):  # c = W_h z^ + b_h; h = tanh(c); J_h = diag(1 - h^2) W_h
        s = bh[i]
        for k in range(n):
            s += Wh[i, k] * zp[k]
        if linear:
            hz[i] = s
            e[i] = 1.0
        else:
            hz[i] = np.tanh(s)
            e[i] = 1.0 - hz[i] * hz[i]
        for k in range(n):
            Jh[i, k] = e[i] * Wh[i, k]
    for i in range(m):
        v[i] = o[i] - hz[i]
    if mu == 0.0:  # predict only: K = 0, M = I; S is not formed (after a long gap it may be too ill-conditioned)
        _unobserved(Sinv, K, Mm, n)
        return
    _mm_nt(Pp, Jh, Bm, n)  # B = P^ J_h^T; S = J_h B + R
    _mm(Jh, Bm, S, n)
    for i in range(m):
        for k in range(m):
            S[i, k] += R[i, k]
    _sym(S, n)
    _spd_inverse(S, L, Sinv, n)
    _mm(Bm, Sinv, K, n)  # K = mu P^ J_h^T S^-1
    for i in range(n):
        for k in range(m):
            K[i, k] *= mu
    _mm(K, Jh, Mm, n)  # M = I - K J_h
    for i in range(n):
        for k in range(n):
            Mm[i, k] = (1.0 if i == k else 0.0) - Mm[i, k]


@njit(cache=True, inline="always", error_model="numpy")
def _finish(zp, Pp, K, v, Mm, R, z_out, P_out, t1, t2, t3, n):
    """z = z^ + K v; P = sym(M P^ M^T + K R K^T) (Joseph form)."""
    for i in range(n):
        s = zp[i]
        for k in range(n):
            s += K[i, k] * v[k]
        z_out[i] = s
    _joseph(Pp, K, Mm, R, P_out, t1, t2, t3, n)


@njit(cache=True, inline="always", error_model="numpy")
def _joseph(Pp, K, Mm, R, P_out, t1, t2, t3, n):
    """P = sym(M P^ M^T + K R K^T): the Joseph-form covariance update, positive definite whatever the rounding."""
    _mm(Mm, Pp, t1, n)
    _mm_nt(t1, Mm, P_out, n)
    _mm(K, R, t2, n)
    _mm_nt(t2, K, t3, n)
    for i in range(n):
        for k in range(n):
            P_out[i, k] += t3[i, k]
    _sym(P_out, n)


@njit(cache=True, inline="always", error_model="numpy")
def _restore(zp, hz, K, Wf, Wh, linear, gap, d, Jf, e, Jh, Mm, n):
    """Rebuild the cheap intermediates of a step (d, J_f, e, J_h, M) from the saved z^, h and K; Wf is the step's
    transition matrix (G in a gap step, `gap`)."""
    m = n
    for i in range(n):
        d[i] = 1.0 if (linear or gap) else 1.0 - zp[i] * zp[i]
        for k in range(n):
            Jf[i, k] = d[i] * Wf[i, k]
    for i in range(m):
        e[i] = 1.0 if linear else 1.0 - hz[i] * hz[i]
        for k in range(n):
            Jh[i, k] = e[i] * Wh[i, k]
    _mm(K, Jh, Mm, n)
    for i in range(n):
        for k in range(n):
            Mm[i, k] = (1.0 if i == k else 0.0) - Mm[i, k]


@njit(cache=True, nogil=True, error_model="numpy")
def filter_forward(obs, mask, Wf, bf, Wh, bh, Q, R, noise, z0, P0, G, c, linear, save, size):
    """obs (B, T, m), mask (B, T) of 0/1 -> states (B, T, n), covariances (B, T, n, n) and, when `save`, the
    intermediates the backward pass reads: z^ (B, T, n), h (B, T, m), P^ (B, T, n, n), S^-1 (B, T, m, m),
    K (B, T, n, m), innovation v (B, T, m) (arrays with a leading 0 otherwise). noise (B, T, m): each frame's
    observation-noise variances, R_t = diag(noise[b, t]) (learned observation noise); a leading 0: R on every frame.
    The EKF with n = 3 runs the generated scalar step (`_steps3`) and saves nothing: its backward computes each step
    again from the step's input (z_{t-1}, P_{t-1})."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    if n == 3 and not linear:
        return _ekf_forward3(obs, mask, Wf, bf, Wh, bh, Q, R, noise, z0, P0, G, c)
    B, T, m = obs.shape[0], obs.shape[1], n
    per_frame = noise.shape[0] > 0
    states = np.empty((B, T, n))
    covs = np.empty((B, T, n, n))
    Bs = B if save else 0
    zp_s, hz_s, v_s = np.empty((Bs, T, n)), np.empty((Bs, T, m)), np.empty((Bs, T, m))
    Pp_s, Sinv_s, K_s = np.empty((Bs, T, n, n)), np.empty((Bs, T, m, m)), np.empty((Bs, T, n, m))
    for b in range(B):
        zp, d, hz, e, v = np.empty(n), np.empty(n), np.empty(m), np.empty(m), np.empty(m)
        Jf, Pp, Mm = np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
        Jh, Bm, K = np.empty((m, n)), np.empty((n, m)), np.empty((n, m))
        S, L, Sinv = np.empty((m, m)), np.empty((m, m)), np.empty((m, m))
        t1, t2, t3 = np.empty((n, n)), np.empty((n, m)), np.empty((n, n))
        Rt = _noise_matrix(R, per_frame)
        for t in range(T):
            z = z0 if t == 0 else states[b, t - 1]
            P = P0 if t == 0 else covs[b, t - 1]
            if save:  # the step writes its intermediates straight into the saved arrays
                zp, hz, v, Pp, Sinv, K = zp_s[b, t], hz_s[b, t], v_s[b, t], Pp_s[b, t], Sinv_s[b, t], K_s[b, t]
            if per_frame:
                _set_frame_noise(Rt, noise, b, t, n)
            _step(z, P, obs[b, t], mask[b, t], Wf, bf, Wh, bh, Q, Rt, G, c, linear,
                  zp, d, Jf, Pp, hz, e, Jh, Bm, S, L, Sinv, K, v, Mm, t1, t2, n)  # fmt: skip
            _finish(zp, Pp, K, v, Mm, Rt, states[b, t], covs[b, t], t1, t2, t3, n)
    return states, covs, zp_s, hz_s, Pp_s, Sinv_s, K_s, v_s


@njit(cache=True, inline="always", error_model="numpy")
def _joseph_adjoint(G, Mm, Pp, K, R, gM, gPp, gK, gR, u1, t2, u2, n):
    """Adjoint of P = sym(M P^ M^T + K R K^T), given G = sym(dL/dP): gM = 2 G M P^, gP^ = M^T G M, gK = 2 G K R;
    adds K^T G K to gR."""
    _mm(G, Mm, u1, n)
    _mm(u1, Pp, gM, n)
    _mm_tn(Mm, u1, gPp, n)
    _mm(G, K, t2, n)
    _mm(t2, R, gK, n)
    _mm_tn(K, t2, u2, n)
    for i in range(n):
        for k in range(n):
            gR[i, k] += u2[i, k]
            gM[i, k] *= 2.0
            gK[i, k] *= 2.0


@njit(cache=True, inline="always", error_model="numpy")
def _gain_adjoint(gK, K, Sinv, J, Pp, gPp, gJ, gR, gKS, gS, t1, u3, mu, n):
    """Adjoint of K = mu B S^-1 with B = P^ J^T and S = J P^ J^T + R, given gK (already times mu; K carries mu):
    adds to gP^, gJ and gR."""
    _mm(gK, Sinv, gKS, n)  # gB = gK S^-1
    _mm_tn(K, gKS, gS, n)  # gS = -sym(S^-1 B^T gK S^-1) = -sym(K^T gK S^-1) / mu (K carries mu, gK too)
    scale = -0.5 / mu if mu != 0.0 else 0.0
    for i in range(n):
        for k in range(i, n):
            s = scale * (gS[i, k] + gS[k, i])
            gS[i, k] = s
            gS[k, i] = s
    _mm(gKS, J, t1, n)  # gP^ += gB J
    for i in range(n):
        for k in range(n):
            gPp[i, k] += t1[i, k]
    _mm_tn(gKS, Pp, u3, n)  # gJ += gB^T P^
    for i in range(n):
        for k in range(n):
            gJ[i, k] += u3[i, k]
    _mm(gS, J, u3, n)  # S = J P^ J^T + R: gJ += 2 gS J P^; gP^ += J^T gS J; gR += gS
    for i in range(n):
        for k in range(n):
            s = 0.0
            for j in range(n):
                s += u3[i, j] * Pp[j, k]
            gJ[i, k] += 2.0 * s
    _mm_tn(J, u3, t1, n)
    for i in range(n):
        for k in range(n):
            gPp[i, k] += t1[i, k]
            gR[i, k] += gS[i, k]


@njit(cache=True, nogil=True, error_model="numpy")
def filter_backward(
    obs,
    mask,
    Wf,
    bf,
    Wh,
    bh,
    Q,
    R,
    noise,
    z0,
    P0,
    Gap,
    gap_c,
    linear,
    states,
    covs,
    zp_s,
    hz_s,
    Pp_s,
    Sinv_s,
    K_s,
    v_s,
    g_states,
    g_covs,
    size,
):
    """Adjoint of `filter_forward` (run with `save`), from its outputs and saved intermediates.
    g_states (B, T, n), g_covs (B, T, n, n) -> gradients w.r.t. obs (B, T, m) and,
    per sequence (sum over B afterwards), W_f (B, n, n), b_f (B, n), W_h (B, m, n), b_h (B, m), Q (B, n, n),
    R (B, m, m), z_0 (B, n), P_0 (B, n, n), and the gap step's G (B, n, n) and c (B, n) (`Gap`, `gap_c`); with
    per-frame noise (B, T, m) the gradient w.r.t. it (B, T, m) in R's place (a (0, T, m) array otherwise).
    The EKF with n = 3 runs the generated scalar adjoint (`_steps3`), which needs no saved intermediates."""
    n = len(size)  # size: a tuple of n zeros, whose length is a compile-time constant (unrolled loops)
    if n == 3 and not linear:
        args = (obs, mask, Wf, bf, Wh, bh, Q, R, noise, z0, P0, Gap, gap_c, states, covs, g_states, g_covs)
        return _ekf_backward3(*args)
    B, T, m = obs.shape[0], obs.shape[1], n
    per_frame = noise.shape[0] > 0
    g_noise = np.zeros(noise.shape)
    g_obs = np.zeros((B, T, m))
    gWf, gbf = np.zeros((B, n, n)), np.zeros((B, n))
    gWh, gbh = np.zeros((B, m, n)), np.zeros((B, m))
    gQ, gR = np.zeros((B, n, n)), np.zeros((B, m, m))
    gz0, gP0 = np.zeros((B, n)), np.zeros((B, n, n))
    gG, g_gap_c = np.zeros((B, n, n)), np.zeros((B, n))
    for b in range(B):
        d, e = np.empty(n), np.empty(m)
        Jf, Mm, Jh = np.empty((n, n)), np.empty((n, n)), np.empty((m, n))
        t1, t2, ga = np.empty((n, n)), np.empty((n, m)), np.empty(n)
        gz, gP = np.zeros(n), np.zeros((n, n))  # adjoints carried from step t + 1 into z_t, P_t
        G, gMm, gPp, gK = np.empty((n, n)), np.empty((n, n)), np.empty((n, n)), np.empty((n, m))
        gJh, gS, gKS = np.empty((m, n)), np.empty((m, m)), np.empty((n, m))
        gJf, gzp, ghz, gv = np.empty((n, n)), np.empty(n), np.empty(m), np.empty(m)
        u1, u2, u3 = np.empty((n, n)), np.empty((m, m)), np.empty((m, n))
        Rt, gRt = _noise_matrix(R, per_frame), np.zeros((m, m))
        for t in range(T - 1, -1, -1):
            gR_t = gRt if per_frame else gR[b]  # the step's adjoint of R_t: per frame, or summed into R's
            if per_frame:
                _set_frame_noise(Rt, noise, b, t, n)
                gRt[:] = 0.0
            z = z0 if t == 0 else states[b, t - 1]
            P = P0 if t == 0 else covs[b, t - 1]
            mu = mask[b, t]
            gap = mu == 0.0
            A, gA, ga0 = (Gap, gG[b], g_gap_c[b]) if gap else (Wf, gWf[b], gbf[b])  # the step's transition and adjoints
            zp, hz, v, Pp, Sinv, K = zp_s[b, t], hz_s[b, t], v_s[b, t], Pp_s[b, t], Sinv_s[b, t], K_s[b, t]
            _restore(zp, hz, K, A, Wh, linear, gap, d, Jf, e, Jh, Mm, n)
            for i in range(n):
                gz[i] += g_states[b, t, i]
                for k in range(n):
                    gP[i, k] += g_covs[b, t, i, k]
            for i in range(n):  # through P = sym(M P^ M^T + K R K^T)
                for k in range(n):
                    G[i, k] = 0.5 * (gP[i, k] + gP[k, i])
            _joseph_adjoint(G, Mm, Pp, K, Rt, gMm, gPp, gK, gR_t, u1, t2, u2, n)
            _mm(gMm, Jh.T, t2, n)  # M = I - K J_h: gK -= gM J_h^T; gJ_h = -K^T gM
            _mm_tn(K, gMm, gJh, n)
            for i in range(n):
                for k in range(m):
                    gK[i, k] += -t2[i, k] + gz[i] * v[k]  # z = z^ + K v: gK += gz v^T
            for i in range(m):
                for k in range(n):
                    gJh[i, k] = -gJh[i, k]
            for k in range(m):  # gv = K^T gz; v = o - h
                s = 0.0
                for i in range(n):
                    s += K[i, k] * gz[i]
                gv[k] = s
                g_obs[b, t, k] = s
                ghz[k] = -s
            for i in range(n):
                gzp[i] = gz[i]
            for i in range(n):  # K = mu B S^-1 with B = P^ J_h^T
                for k in range(m):
                    gK[i, k] *= mu
            _gain_adjoint(gK, K, Sinv, Jh, Pp, gPp, gJh, gR_t, gKS, gS, t1, u3, mu, n)
            if per_frame:  # R_t = diag(noise[b, t])
                for i in range(m):
                    g_noise[b, t, i] = gRt[i, i]
            for i in range(m):  # J_h = diag(e) W_h, e = 1 - h^2, h = tanh(c), c = W_h z^ + b_h
                s = 0.0
                for k in range(n):
                    gWh[b, i, k] += e[i] * gJh[i, k]
                    s += gJh[i, k] * Wh[i, k]
                gc = ghz[i]
                if not linear:
                    gc = (ghz[i] - 2.0 * hz[i] * s) * e[i]
                gbh[b, i] += gc
                for k in range(n):
                    gWh[b, i, k] += gc * zp[k]
                    gzp[k] += Wh[i, k] * gc
            for i in range(n):  # P^ = sym(J_f P J_f^T + Q)
                for k in range(n):
                    G[i, k] = 0.5 * (gPp[i, k] + gPp[k, i])
                    gQ[b, i, k] += G[i, k]
            _mm(G, Jf, t1, n)
            _mm(t1, P, gJf, n)  # gJ_f = 2 G J_f P
            _mm_tn(Jf, t1, gP, n)  # adjoint into P_{t-1}
            for i in range(n):  # J_f = diag(d) W_f, d = 1 - z^2, z^ = tanh(a), a = W_f z + b_f (A = G, c in a gap)
                s = 0.0
                for k in range(n):
                    gJf[i, k] *= 2.0
                    gA[i, k] += d[i] * gJf[i, k]
                    s += gJf[i, k] * A[i, k]
                ga_i = gzp[i]
                if not (linear or gap):
                    ga_i = (gzp[i] - 2.0 * zp[i] * s) * d[i]
                ga0[i] += ga_i
                for k in range(n):
                    gA[i, k] += ga_i * z[k]
                ga[i] = ga_i
            for k in range(n):  # adjoint into z_{t-1}: A^T ga
                s = 0.0
                for i in range(n):
                    s += A[i, k] * ga[i]
                gz[k] = s
        for i in range(n):
            gz0[b, i] = gz[i]
            for k in range(n):
                gP0[b, i, k] = gP[i, k]
    return g_obs, gWf, gbf, gWh, gbh, gQ, gR, gz0, gP0, gG, g_gap_c, g_noise


@njit(cache=True, inline="always", error_model="numpy")
def _noise_matrix(R, per_frame):
    """The observation noise the steps read: a copy of R, or zeros whose diagonal each frame sets (per-frame)."""
    return np.zeros(R.shape) if per_frame else R.copy()


@njit(cache=True, inline="always", error_model="numpy")
def _set_frame_noise(Rt, noise, b, t, n):
    """Rt = diag(noise[b, t]) (its off-diagonal entries are zeros already)."""
    for i in range(n):
        Rt[i, i] = noise[b, t, i]


@njit(cache=True, nogil=True, error_model="numpy")
def _ekf_forward3(obs, mask, Wf, bf, Wh, bh, Q, R, noise, z0, P0, G, c):
    """`filter_forward` of the EKF for n = 3 (nothing saved)."""
    B, T = obs.shape[0], obs.shape[1]
    states, covs = np.empty((B, T, 3)), np.empty((B, T, 3, 3))
    per_frame = noise.shape[0] > 0
    Rt = _noise_matrix(R, per_frame)
    for b in range(B):
        for t in range(T):
            z, P = (z0, P0) if t == 0 else (states[b, t - 1], covs[b, t - 1])
            mu = mask[b, t]
            if mu == 0.0:
                ekf_gap_step(z, P, G, c, Q, states[b, t], covs[b, t])
                continue
            if per_frame:
                _set_frame_noise(Rt, noise, b, t, 3)
            ekf_observed_step(z, P, obs[b, t], mu, Wf, bf, Wh, bh, Q, Rt, states[b, t], covs[b, t])
    vectors, matrices = np.empty((0, T, 3)), np.empty((0, T, 3, 3))
    return states, covs, vectors, vectors, matrices, matrices, matrices, vectors


@njit(cache=True, nogil=True, error_model="numpy")
def _ekf_backward3(obs, mask, Wf, bf, Wh, bh, Q, R, noise, z0, P0, G, c, states, covs, g_states, g_covs):
    """`filter_backward` of the EKF for n = 3: each step computed again from its input and its adjoint applied."""
    B, T = obs.shape[0], obs.shape[1]
    per_frame = noise.shape[0] > 0
    g_noise = np.zeros(noise.shape)
    g_obs = np.zeros((B, T, 3))
    gWf, gbf, gWh, gbh = np.zeros((B, 3, 3)), np.zeros((B, 3)), np.zeros((B, 3, 3)), np.zeros((B, 3))
    gQ, gR, gz0, gP0 = np.zeros((B, 3, 3)), np.zeros((B, 3, 3)), np.zeros((B, 3)), np.zeros((B, 3, 3))
    gG, gc = np.zeros((B, 3, 3)), np.zeros((B, 3))
    Rt, gRt = _noise_matrix(R, per_frame), np.zeros((3, 3))
    gz, gP, xz, X = np.zeros(3), np.zeros((3, 3)), np.empty(3), np.empty((3, 3))
    for b in range(B):
        gz[:] = 0.0
        gP[:] = 0.0
        for t in range(T - 1, -1, -1):
            for i in range(3):  # the adjoints of z_t, P_t: from step t + 1 and from the outputs
                xz[i] = gz[i] + g_states[b, t, i]
                for k in range(3):
                    X[i, k] = gP[i, k] + g_covs[b, t, i, k]
            z, P = (z0, P0) if t == 0 else (states[b, t - 1], covs[b, t - 1])
            mu = mask[b, t]
            if mu == 0.0:
                ekf_gap_step_adjoint(z, P, G, c, Q, xz, X, gz, gP, gG[b], gc[b], gQ[b])
                continue
            if per_frame:
                _set_frame_noise(Rt, noise, b, t, 3)
                gRt[:] = 0.0
            gR_t = gRt if per_frame else gR[b]  # the step's adjoint of R_t: per frame, or summed into R's
            ekf_observed_step_adjoint(z, P, obs[b, t], mu, Wf, bf, Wh, bh, Q, Rt, xz, X, gz, gP, g_obs[b, t],
                                      gWf[b], gbf[b], gWh[b], gbh[b], gQ[b], gR_t)  # fmt: skip
            if per_frame:  # R_t = diag(noise[b, t])
                for i in range(3):
                    g_noise[b, t, i] = gRt[i, i]
        gz0[b] = gz
        gP0[b] = gP
    return g_obs, gWf, gbf, gWh, gbh, gQ, gR, gz0, gP0, gG, gc, g_noise
