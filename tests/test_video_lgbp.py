"""LGBP-TOP against a direct per-pixel reference: Gabor convolution as the written sum, LBP codes bit by bit from the
neighbours, histograms counted pixel by pixel, volumes averaged frame by frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affect_core.video.config import VideoConfig
from affect_core.video.lgbp_top import gabor_kernels, gabor_magnitudes, lgbp_top, uniform_lbp_bins

SMALL = VideoConfig(face_size=12, wavelengths=(2.0, 3.5), orientations=3, blocks=2, volume=3)
# (d_row, d_col) of the 8 neighbours in circular order, written out again here.
CIRCLE = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]


def reference_gabor(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """|sum_{u,v} image[y - u, x - v] kernel[u, v]| with zeros outside the image, pixel by pixel."""
    h = kernel.shape[0] // 2
    out = np.zeros(image.shape)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            total = 0j
            for u in range(-h, h + 1):
                for v in range(-h, h + 1):
                    if 0 <= y - u < image.shape[0] and 0 <= x - v < image.shape[1]:
                        total += image[y - u, x - v] * kernel[u + h, v + h]
            out[y, x] = abs(total)
    return out


def is_uniform(code: int) -> bool:
    bits = [(code >> p) & 1 for p in range(8)]
    return sum(bits[p] != bits[(p + 1) % 8] for p in range(8)) <= 2


def reference_bin(code: int) -> int:
    uniform = [c for c in range(256) if is_uniform(c)]
    return uniform.index(code) if code in uniform else 58


def reference_lgbp_top(faces: np.ndarray, present: np.ndarray, config: VideoConfig) -> np.ndarray:
    t, s, _ = faces.shape
    kernels = gabor_kernels(config)
    mags = np.array([[reference_gabor(faces[i], k) for k in kernels] for i in range(t)])  # (T, F, S, S)
    nb = config.blocks
    hists = np.full((t, len(kernels), 3, nb * nb, 59), np.nan)
    for i in range(t):
        if not present[i]:
            continue
        prev = i - 1 if i > 0 and present[i - 1] else i
        nxt = i + 1 if i < t - 1 and present[i + 1] else i
        frames = {-1: prev, 0: i, 1: nxt}
        counts = np.zeros((len(kernels), 3, nb * nb, 59))
        pixels = np.zeros(nb * nb)
        for y in range(1, s - 1):
            for x in range(1, s - 1):
                block = (y * nb // s) * nb + (x * nb // s)
                pixels[block] += 1
                for f in range(len(kernels)):
                    centre = mags[i, f, y, x]
                    codes = [0, 0, 0]
                    for bit, (a, b) in enumerate(CIRCLE):
                        neighbours = (
                            mags[i, f, y + a, x + b],  # XY: (dy, dx)
                            mags[frames[a], f, y, x + b],  # XT: (dt, dx)
                            mags[frames[b], f, y + a, x],  # YT: (dy, dt)
                        )
                        for p in range(3):
                            codes[p] |= int(neighbours[p] >= centre) << bit
                    for p in range(3):
                        counts[f, p, block, reference_bin(codes[p])] += 1
        hists[i] = counts / pixels[None, None, :, None]
    out = np.full((t, config.raw_dim), np.nan)
    r = config.volume // 2
    for i in range(t):
        if not present[i]:
            continue
        members = [j for j in range(max(0, i - r), min(t, i + r + 1)) if present[j]]
        out[i] = np.mean([hists[j].reshape(-1) for j in members], axis=0)
    return out


def test_uniform_lbp_has_58_patterns_and_one_bin_for_the_rest() -> None:
    table = uniform_lbp_bins()
    assert sorted(set(table.tolist())) == list(range(59))
    assert [int(table[c]) for c in range(256)] == [reference_bin(c) for c in range(256)]


def test_gabor_magnitudes_equal_the_direct_sum() -> None:
    rng = np.random.default_rng(1)
    faces = rng.random((2, 12, 12)).astype(np.float32)
    fast = gabor_magnitudes(torch.from_numpy(faces), SMALL).numpy()
    for k, kernel in enumerate(gabor_kernels(SMALL)):
        for i in range(2):
            np.testing.assert_allclose(fast[i, k], reference_gabor(faces[i], kernel), rtol=1e-4, atol=1e-5)


def test_lgbp_top_equals_the_per_pixel_reference_with_missing_frames() -> None:
    rng = np.random.default_rng(2)
    faces = rng.random((6, 12, 12)).astype(np.float32)
    present = np.array([True, True, False, True, True, True])
    fast = lgbp_top(faces, present, SMALL)
    slow = reference_lgbp_top(faces.astype(np.float64), present, SMALL)
    assert fast.shape == (6, SMALL.raw_dim)
    assert np.isnan(fast[2]).all() and np.isfinite(np.delete(fast, 2, axis=0)).all()
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)  # random magnitudes: no near-ties at this seed


def test_lgbp_top_histograms_sum_to_one_per_block_and_plane() -> None:
    rng = np.random.default_rng(3)
    out = lgbp_top(rng.random((4, 12, 12)).astype(np.float32), np.ones(4, bool), SMALL)
    sums = out.reshape(4, SMALL.filters, 3, SMALL.blocks**2, 59).sum(axis=-1)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)


@pytest.mark.parametrize("bad", [{"volume": 2}, {"blocks": 0}, {"face_size": 4}, {"wavelengths": ()}])
def test_bad_settings_are_refused(bad: dict) -> None:
    from affect_core.errors import AffectError

    with pytest.raises(AffectError, match="video config"):
        VideoConfig(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU path needs a CUDA device")
def test_filter_bank_on_the_gpu_agrees_with_the_cpu() -> None:
    rng = np.random.default_rng(4)
    config = VideoConfig()
    faces = torch.from_numpy(rng.random((8, 64, 64)).astype(np.float32))
    cpu = gabor_magnitudes(faces, config)
    gpu = gabor_magnitudes(faces.cuda(), config).cpu()
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-4, atol=1e-4)
    present = np.ones(8, bool)
    a, b = lgbp_top(faces, present, config), lgbp_top(faces.cuda(), present, config)
    # Float rounding may flip a comparison at a near-tie: a handful of codes out of 18 x 3 x 62 x 62 a frame.
    assert np.abs(a - b).sum(axis=1).max() < 0.01 * config.filters * 3 * config.blocks**2
