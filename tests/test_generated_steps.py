"""The generated 3 x 3 filter steps (`affect_core.filters._steps3`, written by `_step_codegen`) and the scalar state
recursion for n = 3 against the array kernels that serve every other state size.

A 6-dim problem made of two independent 3-dim blocks runs the array kernels (n = 6); its first block must equal the
3-dim problem run by the n = 3 code: bit for bit for the state recursion (the same operations in the same order,
the other block only adding exact zeros), within rounding for the covariance and EKF steps (S^-1 by its adjugate
there, by a Cholesky solve in the array kernels), values and gradients alike."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import block_diag

from affect_core.filters import _kernels, _linear_kernels, _step_codegen

THREE, SIX = (0,) * 3, (0,) * 6
STEPS = 400


def test_the_generated_module_is_up_to_date() -> None:
    """`python -m affect_core.filters._step_codegen` writes exactly the module that is imported."""
    assert _step_codegen.TARGET.read_text() == _step_codegen.source()


def _problem(seed: int) -> dict[str, np.ndarray]:
    """A 3-dim filter's parameters (F near the kinematic transition, H near I, diagonal Q and R, a mean-reverting
    gap step), a mask with stretches without a face, observations and output adjoints."""
    rng = np.random.default_rng(seed)
    dt = 0.04
    F = np.array([[1.0, dt, dt * dt / 2], [0.0, 1.0, dt], [0.0, 0.0, 1.0]]) + 0.02 * rng.standard_normal((3, 3))
    mask = np.ones(STEPS)
    for start in rng.integers(0, STEPS - 40, 6):
        mask[start : start + rng.integers(1, 40)] = 0.0
    mask[rng.integers(0, STEPS, 5)] = 0.5  # a fractional weight (the reference's mask multiplies the gain)
    return {
        "F": F,
        "G": 0.9 * np.eye(3) + 0.01 * rng.standard_normal((3, 3)),
        "H": np.eye(3) + 0.1 * rng.standard_normal((3, 3)),
        "Q": np.diag(0.01 + 0.05 * rng.random(3)),
        "R": np.diag(0.05 + 0.2 * rng.random(3)),
        "P0": np.diag(0.5 + rng.random(3)),
        "c": 0.05 * rng.standard_normal(3),
        "z0": 0.1 * rng.standard_normal(3),
        "bf": 0.1 * rng.standard_normal(3),
        "bh": 0.1 * rng.standard_normal(3),
        "mask": mask,
        "obs": np.tanh(0.3 * rng.standard_normal((STEPS, 3)).cumsum(0) / 5),
        "g_states": rng.standard_normal((STEPS, 3)),
        "g_covs": rng.standard_normal((STEPS, 3, 3)),
    }


def _pair(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The 3-dim problem (one sequence) and the 6-dim one whose first block it is."""
    a, b = _problem(seed), _problem(seed + 100)
    b["mask"] = a["mask"]  # one mask for the sequence
    six = {}
    for key, value in a.items():
        if key == "mask":
            six[key] = value
        elif key in ("c", "z0", "bf", "bh"):
            six[key] = np.concatenate([value, b[key]])
        elif key in ("obs", "g_states"):
            six[key] = np.concatenate([value, b[key]], axis=-1)
        elif key == "g_covs":
            six[key] = np.stack([block_diag(x, y) for x, y in zip(value, b[key], strict=True)])
        else:
            six[key] = block_diag(value, b[key])
    return a, six


def _close(small: np.ndarray, large: np.ndarray, tolerance: float = 1e-10, name: str = "") -> None:
    scale = max(1.0, float(np.abs(large).max(initial=0.0)))
    np.testing.assert_allclose(small, large, rtol=tolerance, atol=tolerance * scale, err_msg=name)


def _first_block(x: np.ndarray) -> np.ndarray:
    """The first 3-dim block of a 6-dim problem's array: its leading 3 x 3 (a (..., 6, 6) array) or 3 entries."""
    return x[..., :3, :3] if x.shape[-2:] == (6, 6) else x[..., :3]


@pytest.mark.parametrize("seed", [0, 1])
def test_covariance_step_and_its_adjoint_equal_the_array_kernels(seed: int) -> None:
    three, six = _pair(seed)
    results = []
    for p, size in ((three, THREE), (six, SIX)):
        mask = p["mask"][None]
        args = (p["F"], p["G"], p["H"], p["Q"], p["R"])
        covs, gains = _linear_kernels.riccati_forward(mask, *args, p["P0"], size)
        g_gains = p["g_covs"][None]  # any adjoint will do (block-diagonal for the 6-dim one)
        noise = np.zeros((0, STEPS, len(size)))
        g_covs = p["g_covs"][None].transpose(0, 1, 3, 2).copy()
        grads = _linear_kernels.riccati_backward(mask, *args, noise, p["P0"], covs, gains, g_covs, g_gains, size)
        results.append((covs[0], gains[0], grads[:5], grads[5][0]))
    (c3, k3, g3, p3), (c6, k6, g6, p6) = results
    _close(c3, c6[:, :3, :3])
    _close(k3, k6[:, :3, :3])
    assert np.all(c6[:, :3, 3:] == 0.0) and np.all(k6[:, :3, 3:] == 0.0)  # the blocks stay apart
    for name, small, large in zip(("F", "G", "H", "Q", "R"), g3, g6, strict=True):
        if name in ("Q", "R"):  # diagonal matrices: the generated steps give the gradient of the diagonal
            small, large = np.diag(small), np.diag(large)
        _close(small, _first_block(large), 1e-9, name)
    _close(p3, p6[:3, :3], 1e-9, "P0")


@pytest.mark.parametrize("seed", [0, 1])
def test_state_recursion_for_three_equals_the_array_loops_bit_for_bit(seed: int) -> None:
    three, six = _pair(seed)
    rng = np.random.default_rng(seed)
    gains_a, gains_b = 0.3 * rng.standard_normal((2, STEPS, 3, 3))
    gains = {3: gains_a, 6: np.stack([block_diag(x, y) for x, y in zip(gains_a, gains_b, strict=True)])}
    outputs = {}
    for p, size in ((three, THREE), (six, SIX)):
        n = len(size)
        mask, obs = p["mask"][None], p["obs"][None]
        HF = p["H"] @ p["F"]
        node = np.arange(STEPS)[None]
        states = _linear_kernels.state_forward(obs, mask, node, gains[n], p["F"], HF, p["G"], p["c"], p["z0"], size)
        grads = _linear_kernels.state_backward(
            obs, mask, gains[n][None], p["F"], HF, p["G"], p["c"], p["z0"], states, p["g_states"][None], size
        )
        outputs[n] = (states, grads)
    (s3, g3), (s6, g6) = outputs[3], outputs[6]
    assert np.array_equal(s3, s6[..., :3])
    g_obs3, g_gains3, *params3 = g3
    g_obs6, g_gains6, *params6 = g6
    assert np.array_equal(g_obs3, g_obs6[..., :3])
    assert np.array_equal(g_gains3, g_gains6[..., :3, :3])
    for small, large in zip(params3, params6, strict=True):
        assert np.array_equal(small, _first_block(large))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_frame", [False, True])
def test_ekf_step_and_its_adjoint_equal_the_array_kernels(seed: int, per_frame: bool) -> None:
    three, six = _pair(seed)
    rng = np.random.default_rng(seed + 7)
    noise6 = 0.05 + 0.2 * rng.random((1, STEPS, 6)) if per_frame else np.zeros((0, STEPS, 6))
    results = []
    for p, size in ((three, THREE), (six, SIX)):
        n = len(size)
        mask, obs = p["mask"][None], p["obs"][None]
        noise = noise6[..., :n]
        params = (p["F"], p["bf"], p["H"], p["bh"], p["Q"], p["R"], noise, p["z0"], p["P0"], p["G"], p["c"])
        forward = _kernels.filter_forward(obs, mask, *params, False, True, size)
        grads = _kernels.filter_backward(
            obs, mask, *params, False, *forward, p["g_states"][None], p["g_covs"][None], size
        )
        results.append((forward[0][0], forward[1][0], grads))
    (z3, c3, g3), (z6, c6, g6) = results
    _close(z3, z6[:, :3])
    _close(c3, c6[:, :3, :3])
    names = ("obs", "Wf", "bf", "Wh", "bh", "Q", "R", "z0", "P0", "G", "c", "noise")
    for name, small, large in zip(names, g3, g6, strict=True):
        if name in ("Q", "R"):  # diagonal matrices: the generated steps give the gradient of the diagonal
            small, large = np.diagonal(small, axis1=-2, axis2=-1), np.diagonal(large, axis1=-2, axis2=-1)
        _close(small, _first_block(large), 1e-9, name)


@pytest.mark.parametrize("size", [3, 6])
def test_gradients_with_a_fractional_mask_match_finite_differences(size: int) -> None:
    """A mask value between 0 and 1 weights the gain (K = mu P^ H^T S^-1): the backward of both covariance
    recursions (generated for n = 3, arrays for n = 6) and of both EKF steps against finite differences."""
    import torch

    from affect_core.filters.compiled import CompiledRecursion, RiccatiRecursion

    gen = torch.Generator().manual_seed(size)
    T = 6
    mask = torch.tensor([[1.0, 0.5, 0.0, 0.25, 1.0, 0.75]], dtype=torch.float64)
    eye = torch.eye(size, dtype=torch.float64)
    F = (eye + 0.1 * torch.randn(size, size, generator=gen, dtype=torch.float64)).requires_grad_()
    H = (eye + 0.1 * torch.randn(size, size, generator=gen, dtype=torch.float64)).requires_grad_()
    r = torch.full((size,), 0.2, dtype=torch.float64, requires_grad=True)  # R = diag(r): the kernels need it diagonal
    G, Q, P0 = 0.9 * eye, 0.05 * eye, eye

    def riccati(F_, H_, r_):
        return RiccatiRecursion.apply(mask, F_, G, H_, Q, torch.diag(r_), P0, None)

    assert torch.autograd.gradcheck(riccati, (F, H, r), eps=1e-6, atol=1e-6)
    obs = torch.randn(1, T, size, generator=gen, dtype=torch.float64)
    zeros = torch.zeros(size, dtype=torch.float64)

    def ekf(F_, H_, r_):
        R_ = torch.diag(r_)
        return CompiledRecursion.apply(obs, mask, F_, zeros, H_, zeros, Q, R_, zeros, P0, G, zeros, None, False, True)

    assert torch.autograd.gradcheck(ekf, (F, H, r), eps=1e-6, atol=1e-6)


def test_kernels_refuse_a_noise_covariance_that_is_not_diagonal() -> None:
    """The kernels read only the diagonals of Q and R: a full matrix is an error, not silently cut to its diagonal."""
    import torch

    from affect_core.filters.compiled import RiccatiRecursion

    eye = torch.eye(3, dtype=torch.float64)
    full = eye + 0.1
    with pytest.raises(ValueError, match="diagonal"):
        RiccatiRecursion.apply(torch.ones(1, 4, dtype=torch.float64), eye, eye, eye, eye, full, eye, None)
