"""LGBP-TOP appearance features (AVEC2016's recipe): Gabor magnitudes, then uniform LBP histograms on three planes.

For a sequence of aligned faces (T, S, S):

1. Gabor bank: for each wavelength lambda and orientation theta, the complex kernel
   g(x, y) = exp(-(x'^2 + y'^2) / (2 sigma^2)) (exp(i 2 pi x' / lambda) - exp(-2 pi^2 sigma^2 / lambda^2)),
   x' = x cos theta + y sin theta, y' = -x sin theta + y cos theta, sigma = 0.56 lambda, on a (2h+1)^2 grid with
   h = ceil(2 sigma); the response is the magnitude of the convolution with zero padding ("same" size). It is
   computed with FFTs in torch (on the GPU when the faces are there), equal to the direct sum.
2. LBP-TOP: on each filter's magnitude sequence, at every interior pixel of frame t, an 8-bit code per plane
   comparing the 8 neighbours of a 3 x 3 grid with the centre (bit p = neighbour >= centre, neighbours in the circular
   order of NEIGHBOURS): XY in the frame, XT (x and time, same row) and YT (y and time, same column), one frame back
   and ahead. Codes map to the 59 bins of uniform LBP (u2: 58 uniform patterns and one bin for the rest).
3. Histograms: per filter, plane and block of a blocks x blocks grid, bin counts divided by the block's pixel count;
   a frame's feature is the mean of the histograms of the frames with a face in the volume of ``volume`` frames
   centred on it. Layout of the vector: [filter][plane XY, XT, YT][block row-major][bin].

Frames without a face are NaN rows; a missing neighbour frame (no face, or the sequence's end) is replaced by the
frame itself.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from affect_core.video.config import VideoConfig

# (d_row, d_col) of the 8 neighbours, in circular order; bit p of a code is neighbour p >= centre.
NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
BINS = 59


@functools.cache
def uniform_lbp_bins() -> np.ndarray:
    """(256,) int64: the u2 bin of each 8-bit code; uniform patterns (<= 2 circular 0/1 transitions) get bins 0..57 in
    increasing code order, every other code bin 58."""
    table = np.full(256, BINS - 1, dtype=np.int64)
    next_bin = 0
    for code in range(256):
        bits = [(code >> p) & 1 for p in range(8)]
        transitions = sum(bits[p] != bits[(p + 1) % 8] for p in range(8))
        if transitions <= 2:
            table[code] = next_bin
            next_bin += 1
    assert next_bin == BINS - 1
    return table


def gabor_kernels(config: VideoConfig) -> list[np.ndarray]:
    """The bank's complex kernels, scale-major: [(2h+1, 2h+1) complex128] of length filters."""
    kernels = []
    for wavelength in config.wavelengths:
        sigma = 0.56 * wavelength
        half = int(math.ceil(2 * sigma))
        y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
        envelope = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        dc = math.exp(-2 * math.pi**2 * sigma**2 / wavelength**2)
        for k in range(config.orientations):
            theta = k * math.pi / config.orientations
            along = x * math.cos(theta) + y * math.sin(theta)
            kernels.append(envelope * (np.exp(1j * 2 * math.pi * along / wavelength) - dc))
    return kernels


@functools.lru_cache(maxsize=8)
def _kernel_spectra(config: VideoConfig, size: int, device: str) -> tuple[torch.Tensor, int, int]:
    """FFT of every kernel zero-padded to the FFT size: (filters, n, n) complex64, n, and the largest half-width."""
    kernels = gabor_kernels(config)
    half = max(k.shape[0] // 2 for k in kernels)
    n = _fast_size(size + 2 * half)
    padded = np.zeros((len(kernels), n, n), dtype=np.complex128)
    for i, kernel in enumerate(kernels):
        h = kernel.shape[0] // 2
        # Centre each kernel on the largest one's centre, so that one crop serves every filter.
        padded[i, half - h : half + h + 1, half - h : half + h + 1] = kernel
    spectra = torch.fft.fft2(torch.from_numpy(padded).to(torch.complex64))
    return spectra.to(device), n, half


def _fast_size(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def gabor_magnitudes(faces: torch.Tensor, config: VideoConfig) -> torch.Tensor:
    """faces: (T, S, S) float32 -> (T, filters, S, S) float32 magnitudes of the "same"-size zero-padded convolutions."""
    t, s, _ = faces.shape
    spectra, n, half = _kernel_spectra(config, s, str(faces.device))
    image = torch.fft.fft2(faces.to(torch.float32), s=(n, n))
    response = torch.fft.ifft2(image[:, None] * spectra[None])
    return response[:, :, half : half + s, half : half + s].abs().to(torch.float32)


def _codes(previous: torch.Tensor, current: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    """(T, F, S, S) magnitudes at t-1, t, t+1 -> (T, F, 3, S-2, S-2) uint8 8-bit codes of planes XY, XT, YT.

    Plane coordinates (d_row, d_col) of NEIGHBOURS: XY (dy, dx) in frame t; XT (dt, dx) on the same row; YT (dy, dt)
    on the same column.
    """
    t, f, s, _ = current.shape
    centre = current[..., 1:-1, 1:-1]
    by_time = {-1: previous, 0: current, 1: following}
    codes = torch.zeros((t, f, 3, s - 2, s - 2), dtype=torch.uint8, device=current.device)
    above = torch.empty(centre.shape, dtype=torch.bool, device=current.device)
    planes = (
        lambda a, b: (current, a, b),
        lambda a, b: (by_time[a], 0, b),
        lambda a, b: (by_time[b], a, 0),
    )
    for p, offset in enumerate(planes):
        code = codes[:, :, p]
        # Highest bit first: code = 2 * code + bit leaves bit p of neighbour p in place, all in place.
        for a, b in reversed(NEIGHBOURS):
            frames, dr, dc = offset(a, b)
            torch.ge(frames[..., 1 + dr : s - 1 + dr, 1 + dc : s - 1 + dc], centre, out=above)
            code.mul_(2).add_(above.view(torch.uint8))
    return codes


def frame_histograms(magnitudes: torch.Tensor, present: np.ndarray, config: VideoConfig) -> np.ndarray:
    """magnitudes: (T, F, S, S); present: (T,) bool -> (T, raw_dim) float64 per-frame histograms (NaN rows where
    ``present`` is False)."""
    t, f, s, _ = magnitudes.shape
    index = np.arange(t)
    prev_idx = np.where((index > 0) & np.roll(present, 1), index - 1, index)
    next_idx = np.where((index < t - 1) & np.roll(present, -1), index + 1, index)
    device = magnitudes.device
    codes = _codes(
        magnitudes[torch.as_tensor(prev_idx, device=device)],
        magnitudes,
        magnitudes[torch.as_tensor(next_idx, device=device)],
    )
    table = torch.as_tensor(uniform_lbp_bins(), dtype=torch.int32, device=device)
    bins = torch.index_select(table, 0, codes.reshape(-1).to(torch.int32)).reshape(t, f * 3, -1)
    rows = torch.arange(1, s - 1, device=device) * config.blocks // s
    block = (rows[:, None] * config.blocks + rows[None, :]).reshape(-1)  # (S-2)^2 block ids
    nb = config.blocks * config.blocks
    per_frame = f * 3 * nb * BINS
    slot = (torch.arange(f * 3, device=device)[:, None] * nb + block[None, :]) * BINS  # (F*3, (S-2)^2)
    bins += slot[None].to(torch.int32)
    bins += (torch.arange(t, device=device, dtype=torch.int32) * per_frame)[:, None, None]
    counts = torch.bincount(bins.reshape(-1), minlength=t * per_frame).reshape(t, f * 3, nb, BINS)
    pixels = torch.bincount(block, minlength=nb).to(torch.float64)
    hist = (counts.to(torch.float64) / pixels[None, None, :, None]).reshape(t, per_frame).cpu().numpy()
    hist[~present] = np.nan
    return hist


def pool_volume(hist: np.ndarray, present: np.ndarray, volume: int) -> np.ndarray:
    """(T, D) per-frame histograms -> (T, D) float32: per frame with a face, the mean over the frames with a face of the
    centred ``volume``; NaN rows elsewhere."""
    t = hist.shape[0]
    r = volume // 2
    filled = np.where(present[:, None], hist, 0.0)
    cumulative = np.vstack([np.zeros((1, hist.shape[1])), np.cumsum(filled, axis=0)])
    count = np.concatenate([[0], np.cumsum(present)])
    lo = np.clip(np.arange(t) - r, 0, t)
    hi = np.clip(np.arange(t) + r + 1, 0, t)
    n = (count[hi] - count[lo]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (cumulative[hi] - cumulative[lo]) / n[:, None]
    out[~present] = np.nan
    return out.astype(np.float32)


def lgbp_top(faces: np.ndarray | torch.Tensor, present: np.ndarray, config: VideoConfig) -> np.ndarray:
    """faces: (T, S, S) float32 aligned faces (rows of absent frames are ignored); present: (T,) bool ->
    (T, config.raw_dim) float32 LGBP-TOP vectors, NaN rows for frames without a face."""
    present = np.asarray(present, dtype=bool)
    out = np.full((len(present), config.raw_dim), np.nan, dtype=np.float32)
    if not present.any():
        return out
    tensor = torch.as_tensor(faces, dtype=torch.float32)
    hist = frame_histograms(gabor_magnitudes(tensor, config), present, config)
    return pool_volume(hist, present, config.volume)
