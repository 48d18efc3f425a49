"""Filter layers: filterpy oracle, fast paths against the reference loop, EKF behaviour, gradients, contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter as FilterpyKalmanFilter
from torch.func import functional_call

from affect_core.errors import AffectError
from affect_core.filters import (
    BayesFilter,
    ExtendedKalmanFilter,
    FilterOutput,
    KalmanFilter,
    kinematic_transition,
)
from affect_core.filters.base import inverse_softplus

METHODS = ["reference", "fast"]
KF_METHODS = ["reference", "scan", "compiled"]


def random_stable_kf(num_dims: int, seed: int, method: str) -> KalmanFilter:
    """A float64 KF with a random transition of spectral radius 0.95 and random H, Q, R."""
    gen = torch.Generator().manual_seed(seed)
    kf = KalmanFilter(num_dims=num_dims, method=method, p0=0.7).double()
    n = kf.state_dim
    F = torch.randn(n, n, generator=gen, dtype=torch.float64)
    F = 0.95 * F / torch.linalg.eigvals(F).abs().max()
    with torch.no_grad():
        kf.F.copy_(F)
        kf.H.copy_(torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=gen, dtype=torch.float64))
        kf.q.copy_(torch.log(torch.expm1(0.01 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64))))
        kf.r.copy_(torch.log(torch.expm1(0.05 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64))))
        kf.gap_rho.add_(0.5 * torch.randn(n, generator=gen, dtype=torch.float64))
        kf.gap_mean.copy_(0.5 * torch.randn(num_dims, generator=gen, dtype=torch.float64))
    return kf


def perturbed_ekf(num_dims: int, seed: int, method: str, scale: float = 0.2) -> ExtendedKalmanFilter:
    """A float64 EKF with all parameters moved away from their initial values."""
    gen = torch.Generator().manual_seed(seed)
    ekf = ExtendedKalmanFilter(num_dims=num_dims, method=method).double()
    with torch.no_grad():
        for parameter in ekf.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=gen, dtype=torch.float64))
    return ekf


def random_mask(batch: int, steps: int, seed: int, observed: float = 0.7) -> torch.Tensor:
    mask = torch.rand(batch, steps, generator=torch.Generator().manual_seed(seed)) < observed
    mask[0, 2:6] = False  # a gap of several frames
    return mask


def filterpy_run(kf: KalmanFilter, observations: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """filterpy's KalmanFilter, predict then update; where the frame is unobserved the update is skipped and the
    prediction is the gap step x = G x + c (filterpy's control input: F = G, B = I, u = c)."""
    Q, R = (m.detach().numpy() for m in kf.noise_covariances(kf.F))
    G, c = (m.detach().double().numpy() for m in kf.gap_transition(kf.F))
    n = kf.state_dim
    states, covariances = [], []
    for seq, seq_mask in zip(observations, mask, strict=True):
        oracle = FilterpyKalmanFilter(dim_x=n, dim_z=kf.obs_dim)
        oracle.x = np.zeros((n, 1))
        oracle.P = kf.P0.double().numpy().copy()
        oracle.F = kf.F.detach().numpy().copy()
        oracle.H = kf.H.detach().numpy().copy()
        oracle.Q, oracle.R = Q.copy(), R.copy()
        xs, ps = [], []
        for o_t, observed in zip(seq, seq_mask, strict=True):
            if observed:
                oracle.predict()
            else:
                oracle.predict(u=c.reshape(-1, 1), B=np.eye(n), F=G)
            oracle.update(o_t.reshape(-1, 1) if observed else None)
            xs.append(oracle.x.ravel().copy())
            ps.append(oracle.P.copy())
        states.append(xs)
        covariances.append(ps)
    return np.array(states), np.array(covariances)


# ------------------------------------------------------------------------------------------------------------------
# Oracle: filterpy


@pytest.mark.parametrize("method", KF_METHODS)
@pytest.mark.parametrize("num_dims", [1, 2])
@pytest.mark.parametrize("with_gaps", [False, True])
def test_kf_matches_filterpy(method: str, num_dims: int, with_gaps: bool) -> None:
    kf = random_stable_kf(num_dims, seed=10 + num_dims, method=method)
    batch, steps = 3, 40
    observations = torch.randn(
        batch, steps, kf.obs_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    mask = random_mask(batch, steps, seed=4) if with_gaps else torch.ones(batch, steps, dtype=torch.bool)
    expected_states, expected_covariances = filterpy_run(kf, observations.numpy(), mask.numpy())
    with torch.no_grad():
        out = kf(observations, mask=mask if with_gaps else None)
    np.testing.assert_allclose(out.states.numpy(), expected_states, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.covariances.numpy(), expected_covariances, atol=1e-5, rtol=0)


def test_kf_float32_matches_filterpy() -> None:
    kf = random_stable_kf(1, seed=5, method="fast")
    observations = torch.randn(2, 200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    mask = random_mask(2, 200, seed=7)
    expected_states, _ = filterpy_run(kf, observations.numpy(), mask.numpy())
    for method in KF_METHODS:
        kf32 = random_stable_kf(1, seed=5, method=method).float()
        with torch.no_grad():
            out = kf32(observations.float(), mask=mask)
        np.testing.assert_allclose(out.states.double().numpy(), expected_states, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# Fast paths against the reference loop: values and gradients


def values_and_gradients(
    layer: BayesFilter, observations: torch.Tensor, mask: torch.Tensor | None
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    observations = observations.clone().requires_grad_(True)
    layer.zero_grad()
    out = layer(observations, mask=mask)
    gen = torch.Generator().manual_seed(99)
    weights_z = torch.randn(out.states.shape, generator=gen, dtype=out.states.dtype)
    weights_p = torch.randn(out.covariances.shape, generator=gen, dtype=out.states.dtype)
    ((out.states * weights_z).sum() + (out.covariances * weights_p).sum()).backward()
    # A parameter that no frame uses (the gap step's without a mask) gets no gradient on the reference path.
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in layer.named_parameters()}
    grads["observations"] = observations.grad.clone()
    return [out.states.detach(), out.covariances.detach()], grads


@pytest.mark.parametrize(("layer_type", "fast_method"), [("kf", "scan"), ("kf", "compiled"), ("ekf", "compiled")])
@pytest.mark.parametrize("num_dims", [1, 2])
@pytest.mark.parametrize("with_gaps", [False, True])
def test_fast_path_equals_reference(layer_type: str, fast_method: str, num_dims: int, with_gaps: bool) -> None:
    batch, steps = 4, 57
    results = {}
    for method in ("reference", fast_method):
        if layer_type == "kf":
            layer: BayesFilter = random_stable_kf(num_dims, seed=21, method=method)
        else:
            layer = perturbed_ekf(num_dims, seed=22, method=method)
        gen = torch.Generator().manual_seed(23)
        observations = 0.8 * torch.randn(batch, steps, layer.obs_dim, generator=gen, dtype=torch.float64)
        mask = random_mask(batch, steps, seed=24) if with_gaps else None
        results[method] = values_and_gradients(layer, observations, mask)
    (ref_values, ref_grads), (fast_values, fast_grads) = results["reference"], results[fast_method]
    for ref, fast in zip(ref_values, fast_values, strict=True):
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert set(ref_grads) == set(fast_grads)
    for name in ref_grads:
        if with_gaps or not name.startswith("gap_"):  # without a mask the gap step is never taken
            assert ref_grads[name].abs().sum() > 0, name  # the check would be empty otherwise
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_fast_paths_agree_in_float32() -> None:
    gen = torch.Generator().manual_seed(31)
    observations = torch.tanh(torch.randn(3, 500, 3, generator=gen).cumsum(1) * 0.05)
    mask = random_mask(3, 500, seed=32, observed=0.9)
    for cls, method in ((KalmanFilter, "scan"), (KalmanFilter, "compiled"), (ExtendedKalmanFilter, "compiled")):
        ref = cls(method="reference")(observations, mask=mask)
        fast = cls(method=method)(observations, mask=mask)
        assert fast.states.dtype == torch.float32
        torch.testing.assert_close(fast.states, ref.states, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.covariances, ref.covariances, atol=1e-5, rtol=1e-3)


# ------------------------------------------------------------------------------------------------------------------
# EKF behaviour


def test_ekf_with_small_signals_follows_its_linearisation() -> None:
    """Near the origin tanh is the identity to third order, so the EKF is the KF with F = W_f, H = W_h."""
    num_dims, batch, steps = 2, 2, 60
    ekf = perturbed_ekf(num_dims, seed=41, method="reference", scale=0.05)
    with torch.no_grad():
        ekf.b_f.zero_()
        ekf.b_h.zero_()
        ekf.gap_mean.zero_()  # small signals: the gap step relaxes towards 0
    kf = KalmanFilter(num_dims=num_dims, method="reference").double()
    with torch.no_grad():
        kf.F.copy_(ekf.W_f)
        kf.H.copy_(ekf.W_h)
        kf.gap_rho.copy_(ekf.gap_rho)
        kf.q.copy_(ekf.q)
        kf.r.copy_(ekf.r)
    gen = torch.Generator().manual_seed(42)
    unit = torch.randn(batch, steps, ekf.obs_dim, generator=gen, dtype=torch.float64)
    mask = random_mask(batch, steps, seed=43)
    relative_errors = []
    for scale in (1e-2, 1e-3):
        with torch.no_grad():
            nonlinear, linear = ekf(scale * unit, mask=mask), kf(scale * unit, mask=mask)
        relative_errors.append((nonlinear.states - linear.states).abs().max().item() / scale)
        # the Jacobians differ from W_f, W_h by O(signal^2)
        torch.testing.assert_close(nonlinear.covariances, linear.covariances, atol=10 * scale**2, rtol=0)
    # the mismatch is second order in the signal: 10x smaller signal, ~100x smaller relative error
    assert relative_errors[1] < 1e-4
    assert relative_errors[0] / relative_errors[1] > 50
    with torch.no_grad():
        big_nl, big_l = ekf(unit, mask=mask), kf(unit, mask=mask)
    assert (big_nl.states - big_l.states).abs().max() > 1e-2


def numpy_ekf(observations: np.ndarray, mask: np.ndarray, ekf: ExtendedKalmanFilter) -> tuple[np.ndarray, ...]:
    """Textbook EKF written out with numpy (np.linalg.inv on S, the standard covariance update); an unobserved frame
    is the gap step z = G z + (1 - rho) * mean (level components), P = G P G^T + Q, G the constant-acceleration
    model with rho on its diagonal."""
    W_f, b_f, W_h, b_h = (p.detach().numpy() for p in (ekf.W_f, ekf.b_f, ekf.W_h, ekf.b_h))
    Q, R = (m.detach().numpy() for m in ekf.noise_covariances(ekf.W_f))
    n = ekf.state_dim
    rho = (1 - 1e-4) / (1 + np.exp(-ekf.gap_rho.detach().numpy()))
    level_mean = np.zeros(n)
    level_mean[0::3] = ekf.gap_mean.detach().numpy()
    dt = ekf.dt
    G = np.diag(rho)
    for j in range(0, n, 3):  # each dimension's kinematic couplings above the diagonal
        G[j, j + 1], G[j, j + 2], G[j + 1, j + 2] = dt, dt * dt / 2, dt
    z, P = np.zeros(n), ekf.P0.double().numpy().copy()
    states, covariances = [], []
    for o, observed in zip(observations, mask, strict=True):
        if observed:
            z_pred = np.tanh(W_f @ z + b_f)
            F = np.diag(1 - z_pred**2) @ W_f
        else:
            z_pred = G @ z + (1 - rho) * level_mean
            F = G
        P_pred = F @ P @ F.T + Q
        h = np.tanh(W_h @ z_pred + b_h)
        H = np.diag(1 - h**2) @ W_h
        if observed:
            K = P_pred @ H.T @ np.linalg.inv(H @ P_pred @ H.T + R)
            z = z_pred + K @ (o - h)
            P = (np.eye(n) - K @ H) @ P_pred
        else:
            z, P = z_pred, P_pred
        states.append(z)
        covariances.append(P)
    return np.array(states), np.array(covariances)


@pytest.mark.parametrize("method", METHODS)
def test_ekf_matches_numpy_ekf(method: str) -> None:
    ekf = perturbed_ekf(1, seed=51, method=method, scale=0.3)
    gen = torch.Generator().manual_seed(52)
    observations = torch.randn(1, 25, 3, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, 25, dtype=torch.bool)
    mask[0, 7:10] = False
    expected_states, expected_covariances = numpy_ekf(observations[0].numpy(), mask[0].numpy(), ekf)
    with torch.no_grad():
        out = ekf(observations, mask=mask)
    np.testing.assert_allclose(out.states[0].numpy(), expected_states, atol=1e-8, rtol=0)
    np.testing.assert_allclose(out.covariances[0].numpy(), expected_covariances, atol=1e-8, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# Gradients by finite differences


@pytest.mark.parametrize(
    ("layer_type", "method"),
    [("kf", "reference"), ("kf", "scan"), ("kf", "compiled"), ("ekf", "reference"), ("ekf", "compiled")],
)
def test_gradcheck(layer_type: str, method: str) -> None:
    layer = (
        random_stable_kf(1, seed=61, method=method)
        if layer_type == "kf"
        else perturbed_ekf(1, seed=62, method=method, scale=0.2)
    )
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters())
    gen = torch.Generator().manual_seed(63)
    observations = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True, False, True], [True, True, False, False, True, True]])

    def run(obs: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(layer, dict(zip(names, values, strict=True)), (obs,), {"mask": mask})
        return out.states, out.covariances

    assert torch.autograd.gradcheck(run, (observations, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Contracts


def test_kinematic_transition_layout() -> None:
    dt = 0.04
    F = kinematic_transition(2, dt)
    assert F.shape == (6, 6)
    block = torch.tensor([[1.0, dt, dt * dt / 2], [0.0, 1.0, dt], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(F[:3, :3], block)
    torch.testing.assert_close(F[3:, 3:], block)
    assert F[:3, 3:].abs().sum() == 0 and F[3:, :3].abs().sum() == 0
    # level and its derivatives per second: a constant acceleration of 2/s^2 integrates exactly
    z = torch.tensor([0.0, 0.0, 2.0])
    for _ in range(25):
        z = kinematic_transition(1, dt) @ z
    torch.testing.assert_close(z, torch.tensor([1.0, 2.0, 2.0]))


@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
def test_initial_parameters(cls: type[BayesFilter]) -> None:
    layer = cls(num_dims=2, fps=25.0, q_init=1e-3, r_init=0.1, p0=2.0)
    assert (layer.state_dim, layer.obs_dim) == (6, 6)
    Q, R = layer.noise_covariances(torch.zeros(()))
    torch.testing.assert_close(torch.diagonal(Q), torch.full((6,), 1e-3))
    torch.testing.assert_close(torch.diagonal(R), torch.full((6,), 0.1))
    torch.testing.assert_close(layer.P0, 2.0 * torch.eye(6))
    assert layer.z0.abs().sum() == 0
    assert math.isclose(math.log1p(math.exp(inverse_softplus(0.1))), 0.1, rel_tol=1e-12)


@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
@pytest.mark.parametrize("method", ["reference", "fast", "compiled"])
def test_shape_contract(cls: type[BayesFilter], method: str) -> None:
    layer = cls(method=method)
    with pytest.raises(AffectError, match=r"observations must have shape \(B, T, 3\)"):
        layer(torch.zeros(2, 10, 4))
    with pytest.raises(AffectError, match="observations must have shape"):
        layer(torch.zeros(10, 3))
    with pytest.raises(AffectError, match="mask must have shape"):
        layer(torch.zeros(2, 10, 3), mask=torch.ones(2, 9, dtype=torch.bool))
    observations = torch.randn(2, 10, 3)
    out = layer(observations)
    assert isinstance(out, FilterOutput)
    assert out.states.shape == (2, 10, 3) and out.covariances.shape == (2, 10, 3, 3)
    all_true = layer(observations, mask=torch.ones(2, 10, dtype=torch.bool))
    # "fast" may pick another exact implementation once a mask is given: float32 rounding apart, the same numbers
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if method == "fast" else {"atol": 1e-7, "rtol": 0}
    torch.testing.assert_close(out.states, all_true.states, **tolerance)
    torch.testing.assert_close(out.covariances, all_true.covariances, **tolerance)


@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
@pytest.mark.parametrize("method", ["reference", "fast", "compiled"])
def test_unobserved_frames_are_predict_only(cls: type[BayesFilter], method: str) -> None:
    """Values at unobserved frames (here NaN) never matter, and get zero gradient."""
    layer = cls(method=method)
    observations = torch.randn(1, 12, 3)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 4:8] = False
    poisoned = observations.clone()
    poisoned[0, 4:8] = float("nan")
    poisoned.requires_grad_(True)
    out = layer(poisoned, mask=mask)
    clean = layer(observations, mask=mask)
    assert torch.isfinite(out.states).all() and torch.isfinite(out.covariances).all()
    torch.testing.assert_close(out.states, clean.states)
    out.states.sum().backward()
    assert poisoned.grad is not None and (poisoned.grad[0, 4:8] == 0).all() and torch.isfinite(poisoned.grad).all()
    # predict only, with the gap step: z_t = G z_{t-1} + c, P_t = G P_{t-1} G^T + Q; the next update shrinks P
    G, c = (m.detach() for m in layer.gap_transition(observations))
    Q = layer.noise_covariances(observations)[0].detach()
    z, P = out.states[0].detach(), out.covariances[0].detach()
    for t in range(4, 8):
        torch.testing.assert_close(z[t], G @ z[t - 1] + c)
        torch.testing.assert_close(P[t], G @ P[t - 1] @ G.mT + Q)
    trace = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1)
    assert trace[8] < trace[7]


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(AffectError, match="method"):
        KalmanFilter(method="parallel")
    with pytest.raises(AffectError, match="method"):
        ExtendedKalmanFilter(method="scan")  # the EKF is not a linear recursion


@pytest.mark.parametrize("layer_type", ["kf", "ekf"])
@pytest.mark.parametrize("with_gaps", [False, True])
def test_compiled_path_is_the_same_on_one_and_several_threads(layer_type: str, with_gaps: bool) -> None:
    """The compiled kernels split the batch over torch's threads; the split must not change any number."""
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            layer = (
                random_stable_kf(2, seed=71, method="compiled")
                if layer_type == "kf"
                else perturbed_ekf(2, seed=72, method="compiled")
            )
            gen = torch.Generator().manual_seed(73)
            observations = 0.8 * torch.randn(7, 33, layer.obs_dim, generator=gen, dtype=torch.float64)
            mask = random_mask(7, 33, seed=74) if with_gaps else None
            results.append(values_and_gradients(layer, observations, mask))
    finally:
        torch.set_num_threads(previous)
    (values_1, grads_1), (values_3, grads_3) = results
    for a, b in zip(values_1, values_3, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    for name in grads_1:
        torch.testing.assert_close(grads_1[name], grads_3[name], atol=1e-12, rtol=1e-12, msg=name)


def test_ekf_forward_without_gradients_equals_the_training_forward() -> None:
    layer = perturbed_ekf(1, seed=81, method="compiled")
    observations = torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(82), dtype=torch.float64)
    with torch.no_grad():
        inference = layer(observations)
    training = layer(observations)
    assert training.states.requires_grad
    torch.testing.assert_close(inference.states, training.states.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("with_gaps", [False, True])
def test_compiled_kf_is_exact_through_settled_stretches(with_gaps: bool) -> None:
    """Long sequences: the covariance recursion settles (bit-for-bit repeats, which the compiled path copies
    instead of recomputing, forward and backward), leaves the settled state at a gap, and settles again."""
    steps = 500
    mask = torch.ones(2, steps, dtype=torch.bool)
    if with_gaps:
        mask[0, 200:230] = False
        mask[1, 50:53] = False
        mask[1, 350:450:7] = False
    results = {}
    for method in ("reference", "compiled"):
        layer = KalmanFilter(method=method, q_init=1e-2, r_init=1e-2).double()
        observations = torch.tanh(
            0.1 * torch.randn(2, steps, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64).cumsum(1)
        )
        results[method] = values_and_gradients(layer, observations, mask)
    covariances = results["compiled"][0][1]
    settled = (covariances[:, 2:] == covariances[:, :-2]).flatten(2).all(-1)  # P_t equal bit for bit to P_{t-2}
    assert int(settled.sum()) > 0.6 * 2 * steps  # most steps of both sequences repeat an earlier input
    (ref_values, ref_grads), (fast_values, fast_grads) = results["reference"], results["compiled"]
    for ref, fast in zip(ref_values, fast_values, strict=True):
        torch.testing.assert_close(fast, ref, atol=1e-7, rtol=1e-7)
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
def test_compiled_path_through_a_long_gap(cls: type[BayesFilter]) -> None:
    """A 160 s run without a face (4000 predict-only gap steps: the covariance settles at the gap step's stationary
    value), then observations again: finite, and equal to the float64 reference."""
    observations = 0.1 * torch.randn(1, 4600, 3, generator=torch.Generator().manual_seed(91), dtype=torch.float64)
    mask = torch.ones(1, 4600, dtype=torch.bool)
    mask[0, 300:4300] = False
    outputs = []
    for method in ("reference", "compiled"):
        with torch.no_grad():
            outputs.append(cls(method=method).double()(observations, mask=mask))
    reference, compiled = outputs
    assert bool(torch.isfinite(compiled.states).all()) and bool(torch.isfinite(compiled.covariances).all())
    torch.testing.assert_close(compiled.states, reference.states, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled.covariances, reference.covariances, atol=1e-6, rtol=1e-6)


def test_covariance_steps_are_shared_across_rows_exactly() -> None:
    """Inference's covariance recursion (`riccati_nodes`) computes each distinct step once: rows with one mask share
    every step, rows with a common prefix share the prefix, a settled stretch costs nothing. Every step equals, bit
    for bit, training's step by step recursion (`riccati_forward`) of each row alone; a mask value other than 0 and
    1 is computed without sharing."""
    from affect_core.filters import _linear_kernels

    def nodes(mask: np.ndarray, size: tuple[int, ...], *matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        F, G, H, Q, R, P0 = matrices
        noise = np.zeros((0, mask.shape[1], len(size)))
        node, covs, gains, computed = _linear_kernels.riccati_nodes(mask, F, G, H, Q, R, noise, P0, size)
        return covs[node], gains[node], computed

    for num_dims in (1, 2):  # the generated 3 x 3 step and the array step
        layer = KalmanFilter(num_dims=num_dims, q_init=1e-2, r_init=1e-2).double()
        F, H = layer.F.detach().numpy(), layer.H.detach().numpy()
        Q, R = (m.detach().numpy() for m in layer.noise_covariances(torch.zeros(1, dtype=torch.float64)))
        P0 = layer.prior(torch.zeros(1, 1, 3 * num_dims, dtype=torch.float64))[1].detach().numpy()
        G = layer.gap_transition(torch.zeros(1, dtype=torch.float64))[0].detach().numpy()
        matrices = (F, G, H, Q, R, P0)
        size = (0,) * (3 * num_dims)
        steps = 300
        gap = np.ones((8, steps))
        gap[:, 40:55] = 0.0
        covs, gains, computed = nodes(gap, size, *matrices)
        alone = _linear_kernels.riccati_forward(gap[:1], F, G, H, Q, R, P0, size)
        assert computed == nodes(gap[:1], size, *matrices)[2] < steps  # a settled stretch costs nothing
        assert np.array_equal(covs, np.repeat(alone[0], 8, axis=0))
        assert np.array_equal(gains, np.repeat(alone[1], 8, 0))

        rng = np.random.default_rng(3)
        mixed = np.ones((6, steps))
        mixed[1, 100:120] = 0.0  # shares the first 100 steps with row 0
        mixed[2] = rng.random(steps) > 0.2
        mixed[3, 250:] = 0.0
        mixed[4, 7] = 0.5  # a fractional weight: computed step by step
        mixed[5] = mixed[1]
        covs, gains, computed = nodes(mixed, size, *matrices)
        separately = [_linear_kernels.riccati_forward(mixed[b : b + 1], F, G, H, Q, R, P0, size) for b in range(6)]
        assert np.array_equal(covs, np.concatenate([s[0] for s in separately]))
        assert np.array_equal(gains, np.concatenate([s[1] for s in separately]))
        assert computed == nodes(mixed[:5], size, *matrices)[2]  # row 5 repeats row 1
        assert computed < sum(nodes(mixed[b : b + 1], size, *matrices)[2] for b in range(5))  # rows 0, 1 share
        reference = KalmanFilter(method="reference", num_dims=num_dims, q_init=1e-2, r_init=1e-2).double()
        observed = torch.from_numpy(mixed[[0, 1, 2, 3, 5]]).bool()
        expected = reference(torch.zeros(5, steps, 3 * num_dims, dtype=torch.float64), mask=observed).covariances
        torch.testing.assert_close(torch.from_numpy(covs[[0, 1, 2, 3, 5]]), expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("masked", [False, True])
def test_kalman_filter_without_a_graph_equals_the_differentiable_path_bit_for_bit(masked: bool) -> None:
    """Inference reads the covariance recursion's distinct steps (`linear_filter_values`) instead of a copy per step;
    its states and covariances are those of the differentiable path exactly, sliced over torch's threads or not."""
    torch.manual_seed(0)
    layer = KalmanFilter(method="compiled", num_dims=2, q_init=1e-2, r_init=1e-2)
    observations = torch.randn(7, 300, 6)
    mask = None
    if masked:
        rng = np.random.default_rng(1)
        mask = torch.from_numpy(rng.random((7, 300)) > 0.1)
        mask[2, 50:120] = False  # a long gap
        mask[4] = mask[3]  # two sequences with one mask
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            differentiable = layer(observations.clone().requires_grad_(), mask=mask)
            with torch.inference_mode():
                values = layer(observations, mask=mask)
            assert torch.equal(values.states, differentiable.states.detach())
            assert torch.equal(values.covariances, differentiable.covariances.detach())
            assert values.covariances.dtype == observations.dtype
    finally:
        torch.set_num_threads(threads)
