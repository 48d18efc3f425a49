"""Per-frame observation noise (learned observation noise, R_t = diag(noise[b, t])) on the compiled CPU kernels:
values and gradients equal the step-by-step reference, with and without frames without a face, 3x3 and 6x6, on one
and several threads, with and without an autograd graph; gradcheck of the kernels' hand backward w.r.t. the noise."""

from __future__ import annotations

import pytest
import torch

from affect_core.filters import BayesFilter, ExtendedKalmanFilter, KalmanFilter
from affect_core.filters.compiled import CompiledRecursion, RiccatiRecursion

TOL = 1e-8  # float64 throughout: the kernels and the reference agree to rounding


def perturbed(cls: type[BayesFilter], num_dims: int, method: str, seed: int) -> BayesFilter:
    gen = torch.Generator().manual_seed(seed)
    layer = cls(num_dims=num_dims, method=method).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=gen, dtype=torch.float64))
    return layer


def batch(num_dims: int, masked: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Observations (4, 90, 3k), a mask with stretches without a face (or None) and noise offsets that vary by frame."""
    gen = torch.Generator().manual_seed(seed)
    n = 3 * num_dims
    observations = torch.tanh(0.2 * torch.randn(4, 90, n, generator=gen, dtype=torch.float64).cumsum(1))
    mask = None
    if masked:
        mask = torch.ones(4, 90, dtype=torch.bool)
        mask[0, 10:30] = False
        mask[1, :5] = False
        mask[2, 60:] = False
    offsets = 1.5 * torch.randn(4, 90, n, generator=gen, dtype=torch.float64)
    return observations, mask, offsets


def run(layer: BayesFilter, observations, mask, offsets) -> tuple[torch.Tensor, ...]:
    """Values and the gradients of a loss on states and covariances w.r.t. observations, offsets and every
    parameter."""
    observations = observations.clone().requires_grad_(True)
    offsets = offsets.clone().requires_grad_(True)
    layer.zero_grad()
    out = layer(observations, mask=mask, noise_offset=offsets)
    weights = torch.linspace(-1, 1, out.states.shape[-1], dtype=torch.float64)
    loss = (out.states * weights).sin().sum() + out.covariances.diagonal(dim1=-2, dim2=-1).sqrt().sum()
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in layer.parameters()]
    return (out.states.detach(), out.covariances.detach(), observations.grad, offsets.grad, *grads)


@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
@pytest.mark.parametrize("num_dims", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_per_frame_noise_equals_the_reference(cls, num_dims: int, masked: bool) -> None:
    torch.set_num_threads(1)
    observations, mask, offsets = batch(num_dims, masked)
    reference = perturbed(cls, num_dims, "reference", seed=4)
    compiled = perturbed(cls, num_dims, "compiled", seed=4)
    expected = run(reference, observations, mask, offsets)
    got = run(compiled, observations, mask, offsets)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=1e-7)
    assert got[3].abs().sum() > 0  # the offsets get a gradient
    if mask is not None:  # and none where the frame has no face
        assert float(got[3][~mask].abs().max()) == 0.0


@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
def test_per_frame_noise_without_a_graph_and_on_several_threads(cls) -> None:
    """Inference (no autograd graph: the KF reads its covariance nodes) and a batch split over 3 threads give the
    values of the one-thread pass with gradients."""
    observations, mask, offsets = batch(1, masked=True, seed=5)
    layer = perturbed(cls, 1, "compiled", seed=6)
    torch.set_num_threads(1)
    expected = layer(observations, mask=mask, noise_offset=offsets)
    with torch.no_grad():
        plain = layer(observations, mask=mask, noise_offset=offsets)
    torch.set_num_threads(3)
    try:
        threaded = run(layer, observations, mask, offsets)
        single = None
        torch.set_num_threads(1)
        single = run(layer, observations, mask, offsets)
    finally:
        torch.set_num_threads(1)
    torch.testing.assert_close(plain.states, expected.states, atol=0, rtol=0)
    torch.testing.assert_close(plain.covariances, expected.covariances, atol=0, rtol=0)
    for a, b in zip(threaded, single, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_constant_per_frame_noise_is_the_fixed_noise() -> None:
    """noise_offset = 0 everywhere gives R_t = R on every frame: the shared recursion's values and gradients."""
    observations, mask, _ = batch(1, masked=True, seed=7)
    layer = perturbed(KalmanFilter, 1, "compiled", seed=8)
    zero = torch.zeros_like(observations)
    with_noise = run(layer, observations, mask, zero)
    layer.zero_grad()
    obs = observations.clone().requires_grad_(True)
    out = layer(obs, mask=mask)
    weights = torch.linspace(-1, 1, 3, dtype=torch.float64)
    ((out.states * weights).sin().sum() + out.covariances.diagonal(dim1=-2, dim2=-1).sqrt().sum()).backward()
    torch.testing.assert_close(with_noise[0], out.states.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(with_noise[2], obs.grad, atol=1e-10, rtol=0)
    for a, p in zip(with_noise[4:], layer.parameters(), strict=True):
        torch.testing.assert_close(a, torch.zeros_like(p) if p.grad is None else p.grad, atol=1e-10, rtol=1e-9)


def test_gradcheck_of_the_kernels_wrt_per_frame_noise() -> None:
    """The hand-derived backward passes of both compiled recursions, w.r.t. the per-frame noise, against finite
    differences (with a frame without a face)."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(9)
    n, T = 3, 7
    mask = torch.ones(2, T, dtype=torch.float64)
    mask[0, 2:4] = 0.0
    eye = torch.eye(n, dtype=torch.float64)
    F = eye + 0.1 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    G = 0.9 * eye
    H = eye + 0.1 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    Q, R, P0 = 0.05 * eye, 0.2 * eye, eye
    noise = (0.1 + torch.rand(2, T, n, generator=gen, dtype=torch.float64)).requires_grad_(True)

    def covariances_and_gains(v):
        covs, gains = RiccatiRecursion.apply(mask, F, G, H, Q, R, P0, v)
        return covs, gains

    assert torch.autograd.gradcheck(covariances_and_gains, (noise,), eps=1e-6, atol=1e-6)
    obs = torch.randn(2, T, n, generator=gen, dtype=torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64)

    def ekf(v):
        return CompiledRecursion.apply(obs, mask, F, zeros, H, zeros, Q, R, zeros, P0, G, zeros, v, False, True)

    assert torch.autograd.gradcheck(ekf, (noise,), eps=1e-6, atol=1e-6)
