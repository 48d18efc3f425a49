"""Covariances stay symmetric positive definite over 100k float32 steps, with and without gaps in the observations."""

from __future__ import annotations

import pytest
import torch

from affect_core.filters import BayesFilter, ExtendedKalmanFilter, KalmanFilter

STEPS = 100_000
# The step-by-step oracle is slow; the fast paths cover the full 100k float32 steps above.
REFERENCE_STEPS = 20_000


def long_observations(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A slowly wandering affect-like signal in [-1, 1] plus noise, and a mask with no-face gaps of 1 to 400 frames."""
    gen = torch.Generator().manual_seed(7)
    level = torch.tanh(0.02 * torch.randn(1, steps, 3, generator=gen).cumsum(dim=1))
    observations = level + 0.1 * torch.randn(1, steps, 3, generator=gen)
    mask = torch.ones(1, steps, dtype=torch.bool)
    starts = torch.randint(0, steps - 400, (60,), generator=gen)
    lengths = torch.randint(1, 400, (60,), generator=gen)
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        mask[0, start : start + length] = False
    mask[0, -300:] = False  # ends inside a gap
    return observations, mask


def assert_symmetric_positive_definite(covariances: torch.Tensor) -> None:
    assert covariances.dtype == torch.float32
    P = covariances.reshape(-1, covariances.shape[-2], covariances.shape[-1])
    assert torch.isfinite(P).all()
    torch.testing.assert_close(P, P.mT, atol=1e-7, rtol=0)
    _, info = torch.linalg.cholesky_ex(P)
    assert (info == 0).all(), f"Cholesky failed at {int((info != 0).sum())} steps"
    assert (torch.linalg.eigvalsh(P) > 0).all()


def run_long(layer: BayesFilter, with_gaps: bool) -> torch.Tensor:
    observations, mask = long_observations(STEPS)
    with torch.no_grad():
        out = layer(observations, mask=mask if with_gaps else None)
    assert torch.isfinite(out.states).all()
    return out.covariances


@pytest.mark.parametrize("with_gaps", [False, True])
@pytest.mark.parametrize(
    ("cls", "method"), [(KalmanFilter, "scan"), (KalmanFilter, "compiled"), (ExtendedKalmanFilter, "compiled")]
)
def test_fast_path_covariances_stay_positive_definite(cls: type[BayesFilter], method: str, with_gaps: bool) -> None:
    assert_symmetric_positive_definite(run_long(cls(method=method), with_gaps))


def test_parallel_scan_covariances_stay_positive_definite_with_tiny_noise() -> None:
    """The hardest case for float32: nearly noiseless dynamics and a confident prior over 100k steps of scan."""
    layer = KalmanFilter(method="scan", q_init=1e-7, r_init=1e-3, p0=1e-3)
    for with_gaps in (False, True):
        assert_symmetric_positive_definite(run_long(layer, with_gaps))


@pytest.mark.slow
@pytest.mark.parametrize("cls", [KalmanFilter, ExtendedKalmanFilter])
def test_reference_covariances_stay_positive_definite(cls: type[BayesFilter]) -> None:
    """The step-by-step loop in float32; one batch holds the sequence with gaps and the one without."""
    observations, mask = long_observations(REFERENCE_STEPS)
    with torch.no_grad():
        out = cls(method="reference")(observations.expand(2, -1, -1), mask=torch.cat((mask, torch.ones_like(mask))))
    assert torch.isfinite(out.states).all()
    assert_symmetric_positive_definite(out.covariances)
