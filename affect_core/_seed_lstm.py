"""Compiled (numba) recurrence of S independent single-layer LSTMs over B sequences each, forward and adjoint.

PyTorch's gate order (i, f, g, o), float32. The forward takes the input projections of every frame from one matrix
product done by the caller, a seed at a time (small enough to stay in cache); a time step of its recurrence is, per
sequence, the 4H x H recurrent matrix-vector product and the gate nonlinearities. The backward takes the input
projection's adjoint inside, so that the (S, B, T, 4H) gate adjoints are never written out. The loops over the 4H
gates are contiguous so that they run as SIMD instructions, and tanh is a rational approximation (the one Eigen uses
for float32, within a few ulp) that vectorises where a call to the C library's tanhf would not.
sigmoid(x) = (1 + tanh(x / 2)) / 2.

All kernels release the GIL: callers may run slices of the seed dimension on several threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_CLAMP = np.float32(7.90531110763549805)
_A1, _A3, _A5 = np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04), np.float32(1.48572235717979e-05)
_A7, _A9 = np.float32(5.12229709037114e-08), np.float32(-8.60467152213735e-11)
_A11, _A13 = np.float32(2.00018790482477e-13), np.float32(-2.76076847742355e-16)
_B0, _B2 = np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03)
_B4, _B6 = np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)
# Reassociation and fused multiply-adds (what lets the loops vectorise); NaN and infinity keep their meaning.
_FAST = {"contract", "reassoc", "arcp", "nsz", "afn"}


@njit(cache=True, inline="always", fastmath=_FAST, error_model="numpy")
def _tanh(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return p / q


@njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def recurrent_forward(pre, w_hh, h0, c0, acts, cells, tanh_cells, hidden):
    """One LSTM's recurrence over B sequences, its input projection already done: pre (B*T, 4H) holds
    w_ih x_t + both biases at row b*T + t of sequence b (one matrix product outside, where a GEMM runs it several
    times faster than this loop would), w_hh (4H, H), initial state h0, c0 (B, H). Writes the hidden states h_t into
    hidden (B, T, H) and, when acts has a time axis of length T (a backward pass to come), the activations
    [sigmoid i, sigmoid f, tanh g, sigmoid o] into acts (B, T, 4H) and c_t, tanh(c_t) into cells and tanh_cells
    (B, T, H). Otherwise acts and tanh_cells (time axis of length 1) are left alone and cells (B, 1, H) receives
    the last c_t."""
    B, T, H = hidden.shape
    G = 4 * H
    save = acts.shape[1] == T
    w_t = w_hh.T.copy()  # (H, 4H): the loops over the gates read it contiguously
    gates, a = np.empty(G, dtype=np.float32), np.empty(G, dtype=np.float32)
    h, c = h0.copy(), c0.copy()  # the running state of each sequence
    tc = np.empty(H, dtype=np.float32)
    for b in range(B):
        for t in range(T):
            row = b * T + t
            for j in range(G):
                gates[j] = pre[row, j]
            for k in range(H):
                hk = h[b, k]
                for j in range(G):
                    gates[j] += w_t[k, j] * hk
            for j in range(2 * H):  # i, f
                a[j] = _HALF * _tanh(_HALF * gates[j]) + _HALF
            for j in range(2 * H, 3 * H):  # g
                a[j] = _tanh(gates[j])
            for j in range(3 * H, G):  # o
                a[j] = _HALF * _tanh(_HALF * gates[j]) + _HALF
            for k in range(H):  # no branch inside: the loop stays SIMD
                cell = a[H + k] * c[b, k] + a[k] * a[2 * H + k]
                c[b, k] = cell
                tc[k] = _tanh(cell)
                h[b, k] = a[3 * H + k] * tc[k]
                hidden[b, t, k] = h[b, k]
            if save:
                for k in range(H):
                    cells[b, t, k] = c[b, k]
                    tanh_cells[b, t, k] = tc[k]
                for j in range(G):
                    acts[b, t, j] = a[j]
        if not save:
            for k in range(H):
                cells[b, 0, k] = c[b, k]


@njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def fused_backward(g_hidden, inputs, w_ih, w_hh, h0, c0, acts, cells, tanh_cells, hidden):
    """Adjoint of S LSTMs run by `recurrent_forward` (saving) after their input projection, inputs (S, D, B*T):
    g_hidden (S, B, T, H) -> gradients w.r.t. inputs (S, D, B*T), w_ih (S, 4H, D), w_hh (S, 4H, H) and the bias
    (S, 4H) (the initial state is a constant here). The gate adjoints of a step live only until the step before is
    done."""
    S, B, T, G = acts.shape
    H = G // 4
    D = inputs.shape[1]
    wi_t, w_t = _transposed(w_ih), _transposed(w_hh)
    g_inputs = np.empty(inputs.shape, dtype=np.float32)
    g_wi_t = np.zeros((S, D, G), dtype=np.float32)
    g_wt = np.zeros((S, H, G), dtype=np.float32)
    g_bias = np.zeros((S, G), dtype=np.float32)
    g_cell = np.zeros(H, dtype=np.float32)  # adjoint of c_t, carried back through f_{t+1}
    g_h = np.empty(H, dtype=np.float32)
    dg = np.empty(G, dtype=np.float32)  # gate adjoints of step t
    later = np.zeros(G, dtype=np.float32)  # those of step t + 1
    one = np.float32(1.0)
    for s in range(S):
        for b in range(B):
            g_cell[:] = 0.0
            for t in range(T - 1, -1, -1):
                row = b * T + t
                for k in range(H):
                    g_h[k] = g_hidden[s, b, t, k]
                if t < T - 1:
                    for k in range(H):  # h_t feeds the gates of t + 1 through w_hh
                        total = np.float32(0.0)
                        for j in range(G):
                            total += later[j] * w_t[s, k, j]
                        g_h[k] += total
                        g_cell[k] *= acts[s, b, t + 1, H + k]
                for k in range(H):
                    i = acts[s, b, t, k]
                    f = acts[s, b, t, H + k]
                    g = acts[s, b, t, 2 * H + k]
                    o = acts[s, b, t, 3 * H + k]
                    tc = tanh_cells[s, b, t, k]
                    gc = g_cell[k] + g_h[k] * o * (one - tc * tc)
                    g_cell[k] = gc
                    c_prev = cells[s, b, t - 1, k] if t > 0 else c0[s, b, k]
                    dg[k] = gc * g * i * (one - i)
                    dg[H + k] = gc * c_prev * f * (one - f)
                    dg[2 * H + k] = gc * i * (one - g * g)
                    dg[3 * H + k] = g_h[k] * tc * o * (one - o)
                for j in range(G):
                    g_bias[s, j] += dg[j]
                for k in range(D):  # the input projection: g_x = w_ih^T dg; g_w_ih += dg x^T
                    xk = inputs[s, k, row]
                    total = np.float32(0.0)
                    for j in range(G):
                        total += dg[j] * wi_t[s, k, j]
                        g_wi_t[s, k, j] += dg[j] * xk
                    g_inputs[s, k, row] = total
                for k in range(H):
                    hk = hidden[s, b, t - 1, k] if t > 0 else h0[s, b, k]
                    for j in range(G):
                        g_wt[s, k, j] += dg[j] * hk
                for j in range(G):
                    later[j] = dg[j]
    return g_inputs, _transposed(g_wi_t), _transposed(g_wt), g_bias


@njit(cache=True, inline="always", error_model="numpy")
def _transposed(a):
    """a (S, m, n) float32 -> a C-contiguous copy of shape (S, n, m) with out[s, j, k] = a[s, k, j]."""
    S, m, n = a.shape
    out = np.empty((S, n, m), dtype=np.float32)
    for s in range(S):
        for k in range(m):
            for j in range(n):
                out[s, j, k] = a[s, k, j]
    return out
