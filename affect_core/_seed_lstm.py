"""Compiled (numba) recurrence of S independent single-layer LSTMs over B sequences each, forward and adjoint.

PyTorch's gate order (i, f, g, o), zero initial state. Inputs are the input projections with both biases added,
xw `(T, S, B, 4H)`, and the recurrent weights w_hh `(S, 4H, H)`, float32. A time step is, per row (s, b), a 4H x H
matrix-vector product and the gate nonlinearities; the loops over the 4H gates are contiguous so that they run as
SIMD instructions, and tanh is a rational approximation (the one Eigen uses for float32, within a few ulp) that
vectorises where a call to the C library's tanhf would not. sigmoid(x) = (1 + tanh(x / 2)) / 2.

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
def lstm_forward(xw, w_hh):
    """xw (T, S, B, 4H), w_hh (S, 4H, H) -> activations (T, S, B, 4H) [sigmoid i, sigmoid f, tanh g, sigmoid o],
    cells c_t, tanh(c_t) and hidden states h_t, each (T, S, B, H)."""
    T, S, B, G = xw.shape
    H = G // 4
    w_t = np.empty((S, H, G), dtype=np.float32)  # w_hh transposed: the gate loop is the contiguous one
    for s in range(S):
        for j in range(G):
            for k in range(H):
                w_t[s, k, j] = w_hh[s, j, k]
    acts = np.empty((T, S, B, G), dtype=np.float32)
    cells = np.empty((T, S, B, H), dtype=np.float32)
    tanh_cells = np.empty((T, S, B, H), dtype=np.float32)
    hidden = np.empty((T, S, B, H), dtype=np.float32)
    gates = np.empty(G, dtype=np.float32)
    for t in range(T):
        for s in range(S):
            for b in range(B):
                for j in range(G):
                    gates[j] = xw[t, s, b, j]
                if t > 0:
                    previous = hidden[t - 1, s, b]
                    for k in range(H):
                        hk = previous[k]
                        row = w_t[s, k]
                        for j in range(G):
                            gates[j] += row[j] * hk
                a = acts[t, s, b]
                for j in range(2 * H):  # i, f
                    a[j] = _HALF * _tanh(_HALF * gates[j]) + _HALF
                for j in range(2 * H, 3 * H):  # g
                    a[j] = _tanh(gates[j])
                for j in range(3 * H, G):  # o
                    a[j] = _HALF * _tanh(_HALF * gates[j]) + _HALF
                c = cells[t, s, b]
                tc = tanh_cells[t, s, b]
                h = hidden[t, s, b]
                for k in range(H):
                    previous = cells[t - 1, s, b, k] if t > 0 else np.float32(0.0)
                    c[k] = a[H + k] * previous + a[k] * a[2 * H + k]
                    tc[k] = _tanh(c[k])
                    h[k] = a[3 * H + k] * tc[k]
    return acts, cells, tanh_cells, hidden


@njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def lstm_backward(g_hidden, w_hh, acts, cells, tanh_cells, hidden):
    """Adjoint of `lstm_forward`: g_hidden (T, S, B, H) -> gradients w.r.t. xw (T, S, B, 4H) and w_hh (S, 4H, H)."""
    T, S, B, G = acts.shape
    H = G // 4
    w_t = np.empty((S, H, G), dtype=np.float32)
    for s in range(S):
        for j in range(G):
            for k in range(H):
                w_t[s, k, j] = w_hh[s, j, k]
    g_gates = np.empty((T, S, B, G), dtype=np.float32)
    g_wt = np.zeros((S, H, G), dtype=np.float32)  # transposed like w_t: the gate loop is the contiguous one
    g_cell = np.zeros((S, B, H), dtype=np.float32)  # adjoint of c_t, carried back through f_{t+1}
    g_h = np.empty(H, dtype=np.float32)
    one = np.float32(1.0)
    for t in range(T - 1, -1, -1):
        for s in range(S):
            for b in range(B):
                for k in range(H):
                    g_h[k] = g_hidden[t, s, b, k]
                if t < T - 1:
                    for k in range(H):  # h_t feeds the gates of t + 1 through w_hh
                        total = np.float32(0.0)
                        for j in range(G):
                            total += g_gates[t + 1, s, b, j] * w_t[s, k, j]
                        g_h[k] += total
                        g_cell[s, b, k] *= acts[t + 1, s, b, H + k]
                for k in range(H):
                    i = acts[t, s, b, k]
                    f = acts[t, s, b, H + k]
                    g = acts[t, s, b, 2 * H + k]
                    o = acts[t, s, b, 3 * H + k]
                    tc = tanh_cells[t, s, b, k]
                    gc = g_cell[s, b, k] + g_h[k] * o * (one - tc * tc)
                    g_cell[s, b, k] = gc
                    c_prev = cells[t - 1, s, b, k] if t > 0 else np.float32(0.0)
                    g_gates[t, s, b, k] = gc * g * i * (one - i)
                    g_gates[t, s, b, H + k] = gc * c_prev * f * (one - f)
                    g_gates[t, s, b, 2 * H + k] = gc * i * (one - g * g)
                    g_gates[t, s, b, 3 * H + k] = g_h[k] * tc * o * (one - o)
                if t > 0:
                    for k in range(H):
                        hk = hidden[t - 1, s, b, k]
                        for j in range(G):
                            g_wt[s, k, j] += g_gates[t, s, b, j] * hk
    g_w = np.empty((S, G, H), dtype=np.float32)
    for s in range(S):
        for j in range(G):
            for k in range(H):
                g_w[s, j, k] = g_wt[s, k, j]
    return g_gates, g_w
