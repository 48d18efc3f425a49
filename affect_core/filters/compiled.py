"""Autograd bridge to the compiled CPU recursion in `_kernels` (forward and hand-derived backward)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _numpy(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to(device="cpu", dtype=torch.float64).numpy())


class CompiledRecursion(torch.autograd.Function):
    """Predict-then-update recursion of an (extended) Kalman filter run by `_kernels`, in float64 on the CPU.

    Inputs: observations `(B, T, m)`, mask `(B, T)` float 0/1, W_f `(n, n)`, b_f `(n,)`, W_h `(m, n)`, b_h `(m,)`,
    Q `(n, n)`, R `(m, m)`, z_0 `(n,)`, P_0 `(n, n)`, linear (bool: Kalman filter when True).
    Outputs: states `(B, T, n)` and covariances `(B, T, n, n)` in the dtype of the observations.
    """

    @staticmethod
    def forward(ctx, observations, mask, Wf, bf, Wh, bh, Q, R, z0, P0, linear: bool):  # type: ignore[override]
        from affect_core.filters import _kernels

        arrays = [_numpy(x) for x in (observations, mask, Wf, bf, Wh, bh, Q, R, z0, P0)]
        states, covs = _kernels.filter_forward(*arrays, linear)
        ctx.arrays = arrays
        ctx.outputs = (states, covs)
        ctx.linear = linear
        like = dict(dtype=observations.dtype, device=observations.device)
        return torch.from_numpy(states).to(**like), torch.from_numpy(covs).to(**like)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_states, g_covs):  # type: ignore[override]
        from affect_core.filters import _kernels

        states, covs = ctx.outputs
        g_s = np.zeros_like(states) if g_states is None else _numpy(g_states)
        g_c = np.zeros_like(covs) if g_covs is None else _numpy(g_covs)
        grads = _kernels.filter_backward(*ctx.arrays, ctx.linear, states, covs, g_s, g_c)
        g_obs, *per_sequence = grads
        device = g_states.device if g_states is not None else g_covs.device
        dtype = g_states.dtype if g_states is not None else g_covs.dtype

        def back(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).to(dtype=dtype, device=device)

        summed = [back(g.sum(axis=0)) for g in per_sequence]
        return (back(g_obs), None, *summed, None)


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the CPU kernels once, e.g. at install time, so that the first
    training step does not pay the compilation."""
    n = 3
    obs = torch.zeros(1, 2, n, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    for linear in (True, False):
        states, covs = CompiledRecursion.apply(
            obs, mask, eye, torch.zeros(n, dtype=torch.float64), eye, torch.zeros(n, dtype=torch.float64),
            eye, eye, torch.zeros(n, dtype=torch.float64), eye, linear,
        )  # fmt: skip
        (states.sum() + covs.sum()).backward()
