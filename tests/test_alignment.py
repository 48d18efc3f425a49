"""Alignment layers: AA shifts by mu, gradients are right, MA's grid search finds a planted delay."""

import math

import numpy as np
import pytest
import torch

from affect_core.alignment import (
    AdaptiveAlignment,
    FixedGaussianSmoothing,
    FixedShift,
    choose_manual_shift,
    lagged_convolution,
)


def smooth_signal(t: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.normal(size=t + 200), np.hanning(61), mode="same")[100:-100]
    return torch.tensor(x / np.abs(x).max(), dtype=torch.float64)


@pytest.mark.parametrize("mu", [0, 7, 30, -12])
def test_aa_with_fixed_mu_shifts_by_mu_frames(mu):
    aa = AdaptiveAlignment(window=40, mu_init=mu, sigma2_init=1e-4).double()
    assert float(aa.mu.detach()) == pytest.approx(mu, abs=1e-6)
    z = smooth_signal(400).view(1, -1, 1)
    y = aa(z)
    # y_t = z_{t - mu} away from the padded ends
    lo, hi = max(mu, 0) + 1, 400 - max(-mu, 0) - 1
    assert torch.allclose(y[0, lo:hi, 0], z[0, lo - mu : hi - mu, 0], atol=1e-9)


def test_aa_peak_of_a_wide_gaussian_sits_at_mu():
    aa = AdaptiveAlignment(window=50, mu_init=20, sigma2_init=16.0).double()
    impulse = torch.zeros(1, 201, 1, dtype=torch.float64)
    impulse[0, 100, 0] = 1.0
    y = aa(impulse)[0, :, 0]
    assert int(torch.argmax(y)) == 120  # the impulse at frame 100 shows up mu = 20 frames later
    assert float(y.sum().detach()) == pytest.approx(1.0, abs=1e-9)  # normalised weights


def test_aa_gradcheck_float64():
    torch.manual_seed(0)
    aa = AdaptiveAlignment(window=6, mu_init=2.5, sigma2_init=3.0).double()
    z = torch.randn(2, 20, 3, dtype=torch.float64, requires_grad=True)

    def f(z, mu_raw, s_raw):
        offsets = aa.offsets.double()
        mu = aa.window * torch.tanh(mu_raw)
        w = torch.softmax(-((offsets - mu) ** 2) / (2 * torch.nn.functional.softplus(s_raw)), 0)
        return lagged_convolution(z, w)

    mu_raw = aa.mu_raw.detach().clone().requires_grad_(True)
    s_raw = aa.sigma2_raw.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (z, mu_raw, s_raw))
    # and the module's own forward has gradients on both parameters
    aa(z).sum().backward()
    assert aa.mu_raw.grad is not None and aa.sigma2_raw.grad is not None


def test_edges_replicate_end_values():
    z = torch.arange(10, dtype=torch.float64).view(1, -1, 1)
    y = FixedShift(3)(z)
    assert y[0, :, 0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    y = FixedShift(-2)(z)
    assert y[0, :, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]


def test_fixed_gaussian_smoothing_preserves_constants_and_reduces_noise():
    torch.manual_seed(0)
    smooth = FixedGaussianSmoothing(sigma=3.0)
    const = torch.full((1, 50, 2), 0.7)
    assert torch.allclose(smooth(const), const, atol=1e-6)
    noise = torch.randn(1, 2000, 1)
    assert float(smooth(noise).std()) < 0.5 * float(noise.std())


def test_manual_grid_search_finds_planted_shift():
    rng = np.random.default_rng(3)
    fps, planted = 25.0, 40  # 1.6 s, on the 0.2 s grid
    features, labels = [], []
    for seed in range(3):
        latent = smooth_signal(1200, seed).numpy()
        x = np.stack([np.tanh(latent * k) for k in (0.5, 1.0, 2.0)], 1) + rng.normal(scale=0.05, size=(1200, 3))
        x[100:130] = np.nan  # frames without a face
        lab = np.concatenate([np.full(planted, latent[0]), latent[:-planted]])
        features.append(x)
        labels.append(lab)
    assert choose_manual_shift(features, labels, fps=fps) == planted
    assert math.isclose(planted / fps, 1.6)


@pytest.mark.parametrize(("steps", "half"), [(1, 3), (5, 12), (57, 3), (300, 100), (1000, 0)])
def test_lagged_convolution_equals_the_direct_sum(steps, half):
    gen = torch.Generator().manual_seed(steps + half)
    z = torch.randn(2, steps, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(2 * half + 1, generator=gen, dtype=torch.float64)
    expected = torch.zeros_like(z)
    for t in range(steps):
        for k in range(-half, half + 1):
            expected[:, t] += w[k + half] * z[:, min(max(t - k, 0), steps - 1)]  # replicate padding
    torch.testing.assert_close(lagged_convolution(z, w), expected, atol=1e-12, rtol=1e-12)
    got32 = lagged_convolution(z.float(), w.float())  # no gradient taken: float64 inside, float32 out
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, atol=1e-5, rtol=1e-5)
    # Training (a gradient taken): float32 throughout, whose FFT rounding is relative to the size of the whole
    # output (about 1e-6 of it).
    trained = lagged_convolution(z.float().requires_grad_(True), w.float())
    assert trained.dtype == torch.float32
    bound = 2e-6 * float(expected.abs().max())
    torch.testing.assert_close(trained.detach().double(), expected, atol=bound, rtol=1e-5)


def renormalised_direct_sum(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The alignment leaving non-finite values out, frame by frame: per output, the weighted mean over the finite
    values of its window (replicate padding), the weights renormalised over them; NaN where none carries weight."""
    half = (len(w) - 1) // 2
    steps = z.shape[1]
    out = torch.full_like(z, math.nan)
    for t in range(steps):
        taken = torch.stack([z[:, min(max(t - k, 0), steps - 1)] for k in range(-half, half + 1)])  # (2D+1, B, C)
        finite = torch.isfinite(taken)
        weight = (w.view(-1, 1, 1) * finite).sum(0)
        total = (w.view(-1, 1, 1) * torch.where(finite, taken, 0.0)).sum(0) * w.sum()
        out[:, t] = torch.where(weight > 1e-9 * w.sum(), total / weight, math.nan)
    return out


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_frame_reaches_no_output_outside_its_window(bad):
    """One NaN or infinite frame used to make every frame of the video NaN (the FFT mixes all frames): now it is a
    missing value, left out of the windows holding it (weights renormalised over the finite frames), and every
    output outside its window is what it was without it."""
    gen = torch.Generator().manual_seed(5)
    half, steps = 12, 200
    z = torch.randn(2, steps, 3, generator=gen, dtype=torch.float64)
    w = torch.softmax(torch.randn(2 * half + 1, generator=gen, dtype=torch.float64), 0)
    clean = lagged_convolution(z, w)
    broken = z.clone()
    broken[0, 80, 1] = bad
    broken[1, 0:5, :] = bad  # the start too: the replicate padding repeats it
    got = lagged_convolution(broken, w)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, renormalised_direct_sum(broken, w), atol=1e-12, rtol=1e-12)
    inside = torch.zeros(2, steps, 3, dtype=torch.bool)
    inside[0, 80 - half : 80 + half + 1, 1] = True
    inside[1, : 5 + half, :] = True
    torch.testing.assert_close(got[~inside], clean[~inside], atol=1e-14, rtol=0)
    assert (got[inside] - clean[inside]).abs().max() > 1e-3  # the window's outputs did change: left out, not kept


def test_an_output_is_nan_only_where_its_window_has_no_finite_frame():
    z = torch.ones(1, 60, 1, dtype=torch.float64)
    z[0, 20:40] = math.nan
    w = torch.full((5,), 0.2, dtype=torch.float64)  # D = 2
    y = lagged_convolution(z, w)[0, :, 0]
    assert torch.isnan(y[22:38]).all()  # every frame of their windows is missing
    ones = torch.ones(22, dtype=torch.float64)
    torch.testing.assert_close(y[:22], ones, atol=1e-12, rtol=0)  # a constant's mean over its finite frames
    torch.testing.assert_close(y[38:], ones, atol=1e-12, rtol=0)
    whole = lagged_convolution(torch.full((1, 30, 2), math.nan), torch.full((5,), 0.2))
    assert whole.shape == (1, 30, 2) and torch.isnan(whole).all()


def test_the_alignment_of_a_non_finite_frame_has_finite_gradients():
    """Training through a state that is not finite at one frame: the gradients of the alignment's parameters and of
    the other frames stay finite (a NaN frame no longer poisons the whole sequence's gradient)."""
    aa = AdaptiveAlignment(window=10, mu_init=3.0, sigma2_init=4.0).double()
    z = torch.randn(1, 80, 2, dtype=torch.float64)
    z[0, 40, 0] = math.nan
    z.requires_grad_(True)
    aa(z).sum().backward()
    assert torch.isfinite(z.grad).all() and float(z.grad[0, 40, 0]) == 0.0
    assert torch.isfinite(aa.mu_raw.grad) and torch.isfinite(aa.sigma2_raw.grad)


def test_the_way_for_accelerators_equals_the_plain_convolution_on_finite_values(monkeypatch):
    """Off the CPU the convolution does not wait to learn whether every value is finite: it always takes the way
    that leaves non-finite values out, which must give the plain convolution's values (and gradients) exactly."""
    import affect_core.alignment as alignment

    gen = torch.Generator().manual_seed(11)
    z = torch.randn(2, 90, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(21, generator=gen, dtype=torch.float64), 0).requires_grad_(True)
    results = []
    for known in (True, False):
        monkeypatch.setattr(
            alignment, "_known_finite", lambda values, known=known: known and bool(torch.isfinite(values).all())
        )
        y = lagged_convolution(z, w)
        grads = torch.autograd.grad(y.square().sum(), (z, w))
        results.append((y.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
