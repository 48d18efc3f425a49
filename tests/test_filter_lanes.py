"""The linear Kalman filter's lane path (`compiled.LinearFilterRecursion`, `_linear_kernels.filter_lanes_*`): state
and covariance in one generated step, `LANES` sequences side by side, for sequences that each have their own
covariances (frames without a face, per-frame observation noise).

It must give what the two recursions it replaces in training give (`RiccatiRecursion` then `LinearStateRecursion`,
which inference's `linear_filter_values` equals): the states and covariances bit for bit, every gradient within
rounding, for any batch size (full groups, a short group, a group of one) and any number of threads."""

from __future__ import annotations

import math

import pytest
import torch

from affect_core.filters import KalmanFilter
from affect_core.filters._linear_kernels import LANES
from affect_core.filters.compiled import (
    LinearFilterRecursion,
    LinearStateRecursion,
    RiccatiRecursion,
    linear_filter_values,
)

STEPS = 300


def _inputs(batch: int, seed: int, per_frame: bool) -> dict[str, torch.Tensor]:
    """Float64 inputs of the recursions: a mask with stretches without a face (one sequence without any face at
    all, fractional mask values), observations that are NaN where there is no face, parameters near the model's."""
    gen = torch.Generator().manual_seed(seed)
    dt = 0.04

    def noise(*shape: int, scale: float) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    F = torch.tensor([[1.0, dt, dt * dt / 2], [0.0, 1.0, dt], [0.0, 0.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(batch, STEPS, dtype=torch.float64)
    for b in range(batch):
        for start in torch.randint(0, STEPS - 60, (4,), generator=gen).tolist():
            mask[b, start : start + int(torch.randint(1, 60, (1,), generator=gen))] = 0.0
    if batch > 2:
        mask[2] = 0.0  # a video without a face at all
    mask[0, 7] = mask[-1, 11] = 0.5  # fractional weights multiply the gain
    obs = torch.tanh(noise(batch, STEPS, 3, scale=0.3).cumsum(1) / 5)
    obs = obs.masked_fill(mask.unsqueeze(-1) == 0, math.nan)
    return {
        "obs": obs,
        "mask": mask,
        "F": F + noise(3, 3, scale=0.02),
        "G": torch.diag(torch.tensor([0.996, 0.96, 0.96], dtype=torch.float64)) + torch.triu(F, 1),
        "H": torch.eye(3, dtype=torch.float64) + noise(3, 3, scale=0.1),
        "c": noise(3, scale=0.05),
        "Q": torch.diag(0.01 + noise(3, scale=0.05).abs()),
        "R": torch.diag(0.05 + noise(3, scale=0.2).abs()),
        "P0": torch.diag(0.5 + noise(3, scale=1.0).abs()),
        "z0": noise(3, scale=0.1),
        "noise": (0.05 + noise(batch, STEPS, 3, scale=0.1).abs()) if per_frame else None,
    }


def _leaves(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone().requires_grad_(True) for k, v in x.items() if k != "mask" and v is not None}


def _lanes(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return LinearFilterRecursion.apply(
        x["obs"], x["mask"], x["F"], x["G"], x["H"] @ x["F"], x["c"], x["H"], x["Q"], x["R"], x["P0"], x["z0"],
        x.get("noise"),
    )  # fmt: skip


def _two_recursions(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    covs, gains = RiccatiRecursion.apply(x["mask"], x["F"], x["G"], x["H"], x["Q"], x["R"], x["P0"], x.get("noise"))
    obs = torch.where(x["mask"].unsqueeze(-1) != 0, x["obs"], 0.0)  # the two recursions read every frame's value
    states = LinearStateRecursion.apply(obs, x["mask"], gains, x["F"], x["H"] @ x["F"], x["G"], x["c"], x["z0"])
    return states, covs


def _loss(states: torch.Tensor, covs: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if weights is None:  # the covariances reach no loss (a training step's case)
        return states.square().sum()
    return (states * weights[0]).sum() + (covs * weights[1]).sum()


@pytest.mark.parametrize("batch", [1, 2, LANES, LANES + 1, 2 * LANES + 1])
@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("with_covs", [False, True])
def test_the_lanes_equal_the_two_recursions(batch: int, per_frame: bool, with_covs: bool) -> None:
    x = _inputs(batch, seed=batch + 10 * per_frame, per_frame=per_frame)
    gen = torch.Generator().manual_seed(3)
    weights = (
        (torch.randn(batch, STEPS, 3, generator=gen, dtype=torch.float64),
         torch.randn(batch, STEPS, 3, 3, generator=gen, dtype=torch.float64))
        if with_covs else None
    )  # fmt: skip
    results = []
    for run in (_lanes, _two_recursions):
        leaves = _leaves(x)
        states, covs = run({**leaves, "mask": x["mask"]})
        grads = torch.autograd.grad(_loss(states, covs, weights), list(leaves.values()))
        results.append((states.detach(), covs.detach(), dict(zip(leaves, grads, strict=True))))
    (s1, c1, g1), (s2, c2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(c1, c2.to(c1.dtype))
    assert torch.isfinite(s1).all()
    for name in g1:
        scale = max(1.0, float(g2[name].abs().max()))
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-10, atol=1e-10 * scale, msg=name)
    # Frames without a face: never read (NaN there stays out), and no gradient reaches them.
    assert torch.equal(g1["obs"][x["mask"] == 0], torch.zeros_like(g1["obs"][x["mask"] == 0]))


def test_the_lanes_equal_inference() -> None:
    """What training's lanes give equals, bit for bit, what inference gives (`linear_filter_values`, its shared
    steps and the scalar state recursion)."""
    x = _inputs(2 * LANES + 1, seed=7, per_frame=False)
    states, covs = _lanes(x)
    obs = torch.where(x["mask"].unsqueeze(-1) != 0, x["obs"], 0.0)
    values = linear_filter_values(x["mask"], obs, x["F"], x["H"], x["Q"], x["R"], x["P0"], x["z0"], x["G"], x["c"])
    assert torch.equal(states, values[0]) and torch.equal(covs, values[1])


def test_the_lanes_give_the_same_on_any_number_of_threads() -> None:
    x = _inputs(2 * LANES + 1, seed=8, per_frame=True)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            leaves = _leaves(x)
            states, covs = _lanes({**leaves, "mask": x["mask"]})
            grads = torch.autograd.grad(states.square().sum(), list(leaves.values()))
            results.append((states.detach(), covs.detach(), grads))
    finally:
        torch.set_num_threads(before)
    for states, covs, grads in results[1:]:
        assert torch.equal(states, results[0][0]) and torch.equal(covs, results[0][1])
        for a, b in zip(grads, results[0][2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_kalman_filter_takes_the_lanes_in_training_and_keeps_float32() -> None:
    """A float32 batch with frames without a face (NaN there) through the model's filter layer with gradients: the
    lanes' path, whose states match the step-by-step reference's and whose gradients are finite and zero where
    there is no face."""
    torch.manual_seed(0)
    compiled, reference = KalmanFilter(method="compiled"), KalmanFilter(method="reference")
    reference.load_state_dict(compiled.state_dict())
    x = _inputs(LANES + 1, seed=9, per_frame=False)
    obs = x["obs"].float().requires_grad_(True)
    mask = x["mask"] == 1.0
    out = compiled(obs, mask=mask)
    assert out.states.dtype == torch.float32 and out.covariances.dtype == torch.float32
    out.states.square().sum().backward()
    with torch.no_grad():
        expected = reference(obs.detach(), mask=mask)
    torch.testing.assert_close(out.states.detach(), expected.states, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.covariances, expected.covariances, rtol=1e-4, atol=1e-6)
    assert obs.grad is not None and torch.isfinite(obs.grad).all()
    assert torch.equal(obs.grad[~mask], torch.zeros_like(obs.grad[~mask]))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in compiled.parameters() if p.requires_grad)


def test_observations_changed_in_place_after_the_forward_pass_are_refused() -> None:
    """The lanes read the observations in place, without a copy: a backward pass after they were changed in place
    would use the new values, so autograd refuses it (the observations are saved through it)."""
    x = _inputs(LANES + 1, seed=12, per_frame=False)
    leaves = _leaves(x)
    obs = leaves["obs"].clone()
    states, _ = _lanes({**leaves, "obs": obs, "mask": x["mask"]})
    obs.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        states.sum().backward()


def _settling_inputs(per_frame: bool) -> dict[str, torch.Tensor]:
    """A full group of lanes and a group of one over 800 frames, every frame with a face but for a few stretches at
    different places in different rows: each lane's covariance settles between them."""
    x = _inputs(LANES + 1, seed=21, per_frame=per_frame)
    steps = 800
    gen = torch.Generator().manual_seed(5)
    mask = torch.ones(LANES + 1, steps, dtype=torch.float64)
    for row, (start, length) in enumerate([(300, 40), (120, 5), (610, 25), (450, 1), (100, 50)]):
        mask[row, start : start + length] = 0.0
    obs = torch.tanh(0.3 * torch.randn(LANES + 1, steps, 3, generator=gen, dtype=torch.float64).cumsum(1) / 5)
    x["mask"], x["obs"] = mask, obs.masked_fill(mask.unsqueeze(-1) == 0, math.nan)
    if per_frame:
        x["noise"] = 0.05 + 0.1 * torch.rand(LANES + 1, steps, 3, generator=gen, dtype=torch.float64)
    return x


def _steps_left_out(x: dict[str, torch.Tensor]) -> int:
    from affect_core.filters import _linear_kernels

    batch, steps = x["mask"].shape
    groups = -(-batch // LANES)
    noise = x["noise"].numpy() if x.get("noise") is not None else torch.zeros(0, 0, 0, dtype=torch.float64).numpy()
    obs = torch.where(x["mask"].unsqueeze(-1) != 0, x["obs"], 0.0).numpy()
    return _linear_kernels.filter_lanes_forward(
        obs, x["mask"].numpy(), *(x[k].numpy() for k in ("F", "G")), (x["H"] @ x["F"]).numpy(), x["c"].numpy(),
        *(x[k].numpy() for k in ("H", "Q", "R")), noise, x["z0"].numpy(), x["P0"].numpy(),
        torch.empty(batch, steps, 3, dtype=torch.float64).numpy(),
        torch.empty(batch, steps, 3, 3, dtype=torch.float64).numpy(),
        torch.empty(groups, steps, _linear_kernels.SAVED, dtype=torch.float64).numpy(),
    )  # fmt: skip


@pytest.mark.parametrize("per_frame", [False, True])
def test_settled_and_faceless_steps_are_shortened_with_the_same_results(per_frame: bool) -> None:
    """Two shorter steps where they give the whole step's values: where no lane has a face, the predict step; where
    every lane has a face and its covariance has settled (its last step gave back P bit for bit), only the state
    recursion. Most steps of a batch that is mostly seen are shortened, and the states, the covariances and every
    gradient are those of the two recursions all the same. With per-frame noise (R_t changes the step) only the
    faceless ones."""
    x = _settling_inputs(per_frame)
    mask = x["mask"]
    groups, steps = -(-(LANES + 1) // LANES), mask.shape[1]
    # No face in any lane: the group of one repeats its row in its other lanes.
    faceless = int((mask[:LANES] == 0).all(0).sum() + (mask[LANES] == 0).sum())
    assert faceless == 50
    left_out = _steps_left_out(x)
    if per_frame:
        assert left_out == faceless
    else:
        assert left_out - faceless > 0.5 * groups * steps, left_out  # the covariances settle within tens of frames
        with_a_faceless_lane = int((mask[:LANES] == 0).any(0).sum() - (mask[:LANES] == 0).all(0).sum())
        assert left_out <= groups * steps - with_a_faceless_lane
    results = []
    for run in (_lanes, _two_recursions):
        leaves = _leaves(x)
        states, covs = run({**leaves, "mask": x["mask"]})
        grads = torch.autograd.grad(states.square().sum() + covs.sum(), list(leaves.values()))
        results.append((states.detach(), covs.detach(), dict(zip(leaves, grads, strict=True))))
    (s1, c1, g1), (s2, c2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(c1, c2.to(c1.dtype))
    for name in g1:
        scale = max(1.0, float(g2[name].abs().max()))
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-10, atol=1e-10 * scale, msg=name)
