"""Autograd bridges to the compiled CPU recursions (`_kernels`, `_linear_kernels`): forward and hand-derived backward.

The kernels are serial loops in float64 that release the GIL; a batch is cut into as many slices as torch has
threads (the lane kernels: one slice per group of lanes) and the slices run side by side on torch's own OpenMP
threads (`openmp`; a small thread pool where torch has none), each thread taking the next slice left
(`run_slices`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_pool: ThreadPoolExecutor | None = None


def _numpy(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to(device="cpu", dtype=torch.float64).numpy())


def _as_they_are(tensor: Tensor) -> np.ndarray:
    """The values of a per-frame tensor for a kernel without a copy where they are C-contiguous on the CPU: in their
    own dtype (the kernels read float32 and float64 alike; one compiled version per dtype)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


def _tensor(array: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(array).to(dtype=like.dtype, device=like.device)


def _joined(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The slices' outputs along the batch axis (no copy when there is one slice)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def batch_slices(batch: int) -> list[slice]:
    """Contiguous slices of `range(batch)`, one per torch thread (at most one per sequence)."""
    parts = max(1, min(torch.get_num_threads(), batch))
    bounds = [round(i * batch / parts) for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _thread_settings() -> None:
    """A pool thread's floating-point settings: denormals flushed where the process asked for it."""
    from affect_core.runtime import denormals_flushed

    if denormals_flushed():
        torch.set_flush_denormal(True)


def run_slices(kernel: Callable[[Any], Any], slices: Sequence[Any]) -> list[Any]:
    """[kernel(s) for s in slices], run on as many threads as torch has (at most one per slice), the calling thread
    among them, each thread taking the next slice not yet taken until none is left. Once a slice raised, no thread
    starts another; its error is raised after the slices already running have ended.

    The threads are torch's own OpenMP team (`openmp.runner`): after torch's operations its workers are awake and
    spinning on their cores, where threads of our own would wait for one. Where that team cannot be reached, a thread
    pool: the caller works rather than waits, a slice goes to whichever thread is free, and a pool thread that has
    not started when every slice is taken is not waited for."""
    from affect_core.filters import openmp

    threads = min(torch.get_num_threads(), len(slices))
    if threads <= 1:
        return [kernel(s) for s in slices]
    results: list[Any] = [None] * len(slices)
    taken = iter(range(len(slices)))
    lock = threading.Lock()
    failed = threading.Event()  # a slice raised: no thread takes another

    def work() -> None:
        while not failed.is_set():
            with lock:
                k = next(taken, None)
            if k is None:
                return
            try:
                results[k] = kernel(slices[k])
            except BaseException:
                failed.set()
                raise

    team = openmp.runner()
    if team is not None:
        team(work, threads)
    else:
        _on_pool(work, threads - 1)
    return results


def _on_pool(work: Callable[[], None], helpers: int) -> None:
    """work() on the calling thread and on `helpers` threads of the pool; the first error raised once all have
    returned."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="affect-filter", initializer=_thread_settings
        )
    others = [_pool.submit(work) for _ in range(helpers)]
    try:
        work()
    finally:
        # A helper not started yet (the pool busy elsewhere) is cancelled: no slice is left for it. The others are
        # waited for: never return (or raise) while a pool thread still writes into the caller's arrays.
        started = [f for f in others if not f.cancel()]
        wait(started)
    for f in started:
        f.result()  # a pool thread's error, raised here


def _square(transition: Tensor, observation: Tensor) -> tuple[int, ...]:
    """The kernels' size argument: a tuple of n zeros, n the state size. Its length is part of the argument's type,
    so each n gets its own machine code with its 3 x 3 (or 6 x 6) loops unrolled. Observations have the state's size
    in this model family (m = n)."""
    n = int(transition.shape[0])
    if tuple(observation.shape) != (n, n):
        raise ValueError(f"compiled filter kernels need m = n, got observation matrix {tuple(observation.shape)}")
    return (0,) * n


def _diagonal(*matrices: np.ndarray) -> None:
    """Q and R are diagonal (the model's noise covariances are, `BayesFilter.noise_covariances`): the 3 x 3 steps
    read only their diagonals, so anything else is refused, for every state size alike, rather than cut."""
    for matrix in matrices:
        if np.count_nonzero(matrix - np.diag(np.diag(matrix))):
            raise ValueError("compiled filter kernels need diagonal noise covariances Q and R")


class CompiledRecursion(torch.autograd.Function):
    """Predict-then-update recursion of an (extended) Kalman filter run by `_kernels`, in float64 on the CPU.

    Inputs: observations `(B, T, m)`, mask `(B, T)` float 0/1, W_f `(n, n)`, b_f `(n,)`, W_h `(m, n)`, b_h `(m,)`,
    Q `(n, n)` and R `(m, m)` diagonal, z_0 `(n,)`, P_0 `(n, n)`, G `(n, n)` and c `(n,)` (the gap step
    z^ = G z + c where the mask is 0), noise `(B, T, m)` or None (each frame's observation-noise variances:
    R_t = diag(noise[b, t]) in R's place; learned observation noise), linear (bool: Kalman filter when True), save
    (bool: keep the intermediates for the backward pass; pass `torch.is_grad_enabled()`, grad mode being off inside
    `forward`).
    Outputs: states `(B, T, n)` and covariances `(B, T, n, n)` in the dtype of the observations.
    """

    @staticmethod
    def forward(ctx, observations, mask, Wf, bf, Wh, bh, Q, R, z0, P0, G, c, noise, linear: bool, save: bool = True):  # type: ignore[override]
        from affect_core.filters import _kernels

        obs, observed = _numpy(observations), _numpy(mask)
        per_frame = _noise_argument(noise, *obs.shape[1:])
        params = [_numpy(x) for x in (Wf, bf, Wh, bh, Q, R)]
        _diagonal(params[4], params[5])
        params.append(per_frame)
        params += [_numpy(x) for x in (z0, P0, G, c)]
        n = _square(Wf, Wh)
        save = save and any(ctx.needs_input_grad)
        slices = batch_slices(obs.shape[0])

        def kernel(s: slice) -> tuple[np.ndarray, ...]:
            mine = [per_frame[s] if k == 6 else p for k, p in enumerate(params)]  # noise: the slice's rows
            return _kernels.filter_forward(obs[s], observed[s], *mine, linear, save, n)

        parts = run_slices(kernel, slices)
        outputs = [_joined([p[i] for p in parts]) for i in range(len(parts[0]))]
        ctx.saved = (obs, observed, params, linear, outputs, slices, n)
        return _tensor(outputs[0], observations), _tensor(outputs[1], observations)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_states, g_covs):  # type: ignore[override]
        from affect_core.filters import _kernels

        obs, observed, params, linear, outputs, slices, n = ctx.saved
        g_s = np.zeros_like(outputs[0]) if g_states is None else _numpy(g_states)
        g_c = np.zeros_like(outputs[1]) if g_covs is None else _numpy(g_covs)

        def kernel(s: slice) -> tuple[np.ndarray, ...]:
            saved = [array[s] for array in outputs]
            mine = [p[s] if k == 6 else p for k, p in enumerate(params)]
            return _kernels.filter_backward(obs[s], observed[s], *mine, linear, *saved, g_s[s], g_c[s], n)

        parts = run_slices(kernel, slices)
        like = g_states if g_states is not None else g_covs
        g_obs = _tensor(_joined([p[0] for p in parts]), like)
        summed = [_tensor(sum(p[i].sum(axis=0) for p in parts), like) for i in range(1, len(parts[0]) - 1)]
        g_noise = _tensor(_joined([p[-1] for p in parts]), like) if params[6].shape[0] else None
        return (g_obs, None, *summed, g_noise, None, None)


def _noise_argument(noise: Tensor | None, steps: int, m: int) -> np.ndarray:
    """The kernels' per-frame noise argument: (B, T, m) float64, or a (0, T, m) array for "R on every frame"."""
    if noise is None:
        return np.zeros((0, steps, m))
    return _numpy(noise)


class RiccatiRecursion(torch.autograd.Function):
    """Covariances and gains of the linear Kalman filter (`_linear_kernels.riccati_forward`), float64 on the CPU.

    Inputs: mask `(Bc, T)` float 0/1 (one row serves a whole batch without missing frames), F `(n, n)`,
    G `(n, n)` (the gap step's transition, where the mask is 0), H `(m, n)`, Q `(n, n)` and R `(m, m)` diagonal,
    P_0 `(n, n)`, noise `(Bc, T, m)` or None (each frame's observation-noise variances, R_t = diag(noise[b, t]) in
    R's place).
    Outputs, float64: P `(Bc, T, n, n)`, K `(Bc, T, n, m)`.
    """

    @staticmethod
    def forward(ctx, mask, F, G, H, Q, R, P0, noise=None):  # type: ignore[override]
        from affect_core.filters import _linear_kernels

        ctx.set_materialize_grads(False)  # the covariances often reach no loss: no zeros made for their gradient
        observed = _numpy(mask)
        params = [_numpy(x) for x in (F, G, H, Q, R, P0)]
        _diagonal(params[3], params[4])
        per_frame = _noise_argument(noise, observed.shape[1], int(R.shape[0]))
        n = _square(F, H)
        slices = batch_slices(observed.shape[0])

        def kernel(s: slice) -> tuple[np.ndarray, ...]:
            return _linear_kernels.riccati_forward(observed[s], *params, n, noise=per_frame[s])

        parts = run_slices(kernel, slices)
        covs = _joined([p[0] for p in parts])
        gains = _joined([p[1] for p in parts])
        ctx.saved = (observed, params, per_frame, covs, gains, slices, n)
        ctx.like = F
        return torch.from_numpy(covs), torch.from_numpy(gains)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_covs, g_gains):  # type: ignore[override]
        from affect_core.filters import _linear_kernels

        observed, (F, G, H, Q, R, P0), per_frame, covs, gains, slices, n = ctx.saved
        no_rows = np.empty((0, 0, 0, 0))  # a gradient that is zero (an output that reached no loss)
        g_c = no_rows if g_covs is None else _numpy(g_covs)
        g_k = np.zeros_like(gains) if g_gains is None else _numpy(g_gains)

        def kernel(s: slice) -> tuple[np.ndarray, ...]:
            c = g_c if g_covs is None else g_c[s]
            return _linear_kernels.riccati_backward(
                observed[s], F, G, H, Q, R, per_frame[s], P0, covs[s], gains[s], c, g_k[s], n
            )

        parts = run_slices(kernel, slices)
        gF, gG, gH, gQ, gR = (_tensor(sum(p[i] for p in parts), ctx.like) for i in range(5))
        gP0 = _tensor(sum(p[5].sum(axis=0) for p in parts), ctx.like)
        g_noise = _tensor(_joined([p[6] for p in parts]), ctx.like) if per_frame.shape[0] else None
        return None, gF, gG, gH, gQ, gR, gP0, g_noise


class LinearStateRecursion(torch.autograd.Function):
    """States of the linear Kalman filter given its gains (`_linear_kernels.state_forward`), float64 on the CPU.

    Inputs: observations `(B, T, m)`, mask `(Bc, T)` float 0/1, gains K `(Bc, T, n, m)` (Bc = 1: shared by the
    batch), F `(n, n)`, HF `(m, n)` = H F, G `(n, n)` and c `(n,)` (the gap step z_t = G z_{t-1} + c where the mask
    is 0), z_0 `(n,)`. Output: states `(B, T, n)` in the dtype of the observations.
    """

    @staticmethod
    def forward(ctx, observations, mask, gains, F, HF, G, c, z0):  # type: ignore[override]
        from affect_core.filters import _linear_kernels

        obs, K, observed = _numpy(observations), _numpy(gains), _numpy(mask)
        params = [_numpy(x) for x in (F, HF, G, c, z0)]
        n = _square(F, HF)
        slices = batch_slices(obs.shape[0])
        shared = K.shape[0] == 1
        steps = np.arange(K.shape[0] * K.shape[1]).reshape(K.shape[:2])  # every step its own gain
        flat = K.reshape(-1, *K.shape[2:])
        parts = run_slices(
            lambda s: _linear_kernels.state_forward(
                obs[s], observed if shared else observed[s], steps if shared else steps[s], flat, *params, n
            ),
            slices,
        )
        states = _joined(parts)
        ctx.saved = (obs, observed, K, params, states, slices, n)
        ctx.likes = (observations, gains, F)
        return _tensor(states, observations)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_states):  # type: ignore[override]
        from affect_core.filters import _linear_kernels

        obs, observed, K, params, states, slices, n = ctx.saved
        g_s = _numpy(g_states)
        shared = K.shape[0] == 1

        def kernel(s: slice) -> tuple[np.ndarray, ...]:
            rows = slice(None) if shared else s
            return _linear_kernels.state_backward(obs[s], observed[rows], K[rows], *params, states[s], g_s[s], n)

        parts = run_slices(kernel, slices)
        like_obs, like_gains, like_param = ctx.likes
        g_obs = _tensor(_joined([p[0] for p in parts]), like_obs)
        g_gains = sum(p[1] for p in parts) if shared else _joined([p[1] for p in parts])
        gF, gHF, gG, gc, gz0 = (_tensor(sum(p[i] for p in parts), like_param) for i in (2, 3, 4, 5, 6))
        return g_obs, None, _tensor(g_gains, like_gains), gF, gHF, gG, gc, gz0


class LinearFilterRecursion(torch.autograd.Function):
    """The linear Kalman filter for n = 3 where each sequence has its own covariances (frames without a face, or each
    frame its own observation noise): state and covariance in one step (`_linear_kernels.filter_lanes_forward`),
    sequences side by side in groups of `LANES`, float64 inside.

    Inputs: observations `(B, T, 3)`, mask `(B, T)` float 0/1, F, G (the gap step's transition), HF = H F, H `(3, 3)`,
    c `(3,)` (the gap step's offset), Q and R `(3, 3)` diagonal, P_0 `(3, 3)`, z_0 `(3,)`, noise `(B, T, 3)` or None
    (each frame's observation-noise variances, R_t = diag(noise[b, t]) in R's place).
    Outputs, in the dtype of the observations: states `(B, T, 3)`, covariances `(B, T, 3, 3)`; equal bit for bit to
    `RiccatiRecursion` then `LinearStateRecursion` (and to `linear_filter_values`).
    """

    @staticmethod
    def forward(ctx, observations, mask, F, G, HF, c, H, Q, R, P0, z0, noise=None):  # type: ignore[override]
        from affect_core.filters import _linear_kernels

        ctx.set_materialize_grads(False)  # the covariances often reach no loss: no zeros made for their gradient
        obs, observed = _as_they_are(observations), _as_they_are(mask.to(observations.dtype))
        params = [_numpy(x) for x in (F, G, HF, c, H, Q, R)]
        _diagonal(params[5], params[6])
        prior = [_numpy(z0), _numpy(P0)]
        B, T = observed.shape
        per_frame = _noise_argument(noise, T, 3)
        states = np.empty((B, T, 3), dtype=obs.dtype)
        covs = np.empty((B, T, 3, 3), dtype=obs.dtype)
        lanes = _linear_kernels.LANES
        slices = [slice(first, min(first + lanes, B)) for first in range(0, B, lanes)]  # a group of lanes each
        saved = [np.empty((1, T, _linear_kernels.SAVED)) for _ in slices]

        def kernel(k: int) -> None:
            s = slices[k]
            noise_rows = per_frame[s] if per_frame.shape[0] else per_frame
            _linear_kernels.filter_lanes_forward(
                obs[s], observed[s], *params, noise_rows, *prior, states[s], covs[s], saved[k]
            )

        run_slices(kernel, range(len(slices)))
        # The observations are read in place (no copy): saved through autograd, which refuses a backward pass
        # after they were changed in place.
        ctx.save_for_backward(observations)
        ctx.saved = (observed, params, per_frame, prior, saved, slices)
        ctx.like = F
        return _tensor(states, observations), _tensor(covs, observations)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_states, g_covs):  # type: ignore[override]
        from affect_core.filters import _linear_kernels

        (observations,) = ctx.saved_tensors
        observed, params, per_frame, prior, saved, slices = ctx.saved
        obs, dtype = _as_they_are(observations), observations.dtype
        g_s = np.zeros((*observed.shape, 3), obs.dtype) if g_states is None else _as_they_are(g_states.to(dtype))
        g_c = np.empty((0, 0, 0, 0), obs.dtype) if g_covs is None else _as_they_are(g_covs.to(dtype))  # no rows: 0

        def kernel(k: int) -> tuple[np.ndarray, ...]:
            s = slices[k]
            noise_rows = per_frame[s] if per_frame.shape[0] else per_frame
            return _linear_kernels.filter_lanes_backward(
                obs[s], observed[s], *params, noise_rows, *prior, saved[k], g_s[s], g_c if g_covs is None else g_c[s]
            )

        parts = run_slices(kernel, range(len(slices)))
        like = ctx.like
        g_obs = _tensor(_joined([p[0] for p in parts]), like)
        gF, gG, gHF, gH, gQ, gR, gc, gz0, gP0 = (_tensor(sum(p[i] for p in parts), like) for i in range(1, 10))
        g_noise = _tensor(_joined([p[10] for p in parts]), like) if per_frame.shape[0] else None
        return g_obs, None, gF, gG, gHF, gc, gH, gQ, gR, gP0, gz0, g_noise


def linear_filter_values(
    observed: Tensor,
    observations: Tensor,
    F: Tensor,
    H: Tensor,
    Q: Tensor,
    R: Tensor,
    P0: Tensor,
    z0: Tensor,
    G: Tensor,
    c: Tensor,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The linear Kalman filter's states `(B, T, n)` and covariances `(Bc, T, n, n)`, in the dtype of the
    observations, without an autograd graph: what `RiccatiRecursion` then `LinearStateRecursion` return, bit for bit.

    observed: `(Bc, T)` float 0/1 (Bc = 1: one row for the whole batch); noise: `(B, T, m)` per-frame
    observation-noise variances (then Bc = B) or None. Each distinct covariance step is kept once
    (`_linear_kernels.riccati_nodes`): the state recursion reads its gains from the nodes and the covariances are
    gathered from them in the output's dtype, so no float64 copy of every step's covariance and gain is written."""
    from affect_core.filters import _linear_kernels

    mask, obs = _numpy(observed), _numpy(observations)
    F_, G_ = _numpy(F), _numpy(G)
    params = [F_, G_] + [_numpy(x) for x in (H, Q, R, P0)]
    _diagonal(params[3], params[4])
    HF, z, c_ = _numpy(H @ F), _numpy(z0), _numpy(c)
    n = _square(F, H)
    per_frame = _noise_argument(noise, mask.shape[1], int(R.shape[0]))

    def nodes(rows: slice) -> tuple[np.ndarray, np.ndarray, Tensor]:
        F_, G_, H_, Q_, R_, P0_ = params
        node, covs, gains, _ = _linear_kernels.riccati_nodes(mask[rows], F_, G_, H_, Q_, R_, per_frame[rows], P0_, n)
        return node, gains, torch.from_numpy(covs).to(observations.dtype)[torch.from_numpy(node)]

    def states(part: slice, rows: slice, node: np.ndarray, gains: np.ndarray) -> np.ndarray:
        return _linear_kernels.state_forward(obs[part], mask[rows], node, gains, F_, HF, G_, c_, z, n)

    slices = batch_slices(obs.shape[0])
    if mask.shape[0] == 1:  # one covariance row shared by the batch: computed once
        node, gains, covariances = nodes(slice(None))
        parts = run_slices(lambda s: states(s, slice(None), node, gains), slices)
        return _tensor(_joined(parts), observations), covariances

    def filtered(rows: slice) -> tuple[np.ndarray, Tensor]:  # each sequence its own covariance row
        node, gains, covariances = nodes(rows)
        return states(rows, rows, node, gains), covariances

    outputs = run_slices(filtered, slices)
    covariances = outputs[0][1] if len(outputs) == 1 else torch.cat([o[1] for o in outputs])
    return _tensor(_joined([o[0] for o in outputs]), observations), covariances


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the CPU kernels once, e.g. at install time, so that the first
    training step does not pay the compilation."""
    n = 3
    obs = torch.zeros(1, 2, n, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(n, dtype=torch.float64)
    for linear in (True, False):
        states, covs = CompiledRecursion.apply(
            obs, mask, eye, zeros, eye, zeros, eye, eye, zeros, eye, eye, zeros, None, linear
        )
        (states.sum() + covs.sum()).backward()
    covs, gains = RiccatiRecursion.apply(mask, eye, eye, eye, eye, eye, eye, None)
    states = LinearStateRecursion.apply(obs, mask, gains, eye, eye, eye, zeros, zeros)
    (states.sum() + covs.sum()).backward()
    plain = eye.detach()
    linear_filter_values(mask, obs.detach(), plain, plain, plain, plain, plain, zeros, plain, zeros)
    for dtype in (torch.float32, torch.float64):  # the lane kernels read and write the per-frame arrays as they are
        x, e, z = obs.detach().to(dtype).requires_grad_(True), eye.detach().to(dtype), zeros.to(dtype)
        states, covs = LinearFilterRecursion.apply(x, mask.to(dtype), e, e, e, z, e, e, e, e, z, None)
        (states.sum() + covs.sum()).backward()
