"""The model's time grid: a video decoded at any frame rate, constant or variable, is placed on the grid of the model's
frame rate by its frames' presentation timestamps, and the model's outputs are put back on the decoded frames.

Both directions use the one resampler of the input layouts (:func:`affect_core.data.assemble.labels_on_frames`, which
puts labels at their own rate on the feature frames): a grid step takes the decoded frame within 1 ms of its time, else
the interpolation of the two frames around it; it is a frame without a face (a NaN row, the filter's predict-only step)
when either of those had no face or when no decoded frame lies near it (a gap of more than 1.5 steps, of the frames'
median step or the grid's, whichever is longer, or past the ends). Each decoded frame takes the model's output at its
own timestamp, interpolated between the two nearest grid steps.
"""

from __future__ import annotations

import numpy as np

from affect_core.data.assemble import labels_on_frames
from affect_core.data.tracks import TIME_DECIMALS


def grid_times(frame_time: np.ndarray, fps: float) -> np.ndarray:
    """(G,) float64: the grid at ``fps`` from the first decoded frame's time to (within half a step of) the last's.

    frame_time: (N,) strictly increasing seconds, N >= 1."""
    first, last = float(frame_time[0]), float(frame_time[-1])
    steps = int(np.floor((last - first) * fps + 0.5))
    return np.round(first + np.arange(steps + 1) / fps, TIME_DECIMALS)


def features_on_grid(frame_time: np.ndarray, features: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid times (G,), features on the grid (G, k) float32, NaN rows: no face) of decoded frames at ``frame_time``
    (N,) with ``features`` (N, k) (NaN rows: no face)."""
    grid = grid_times(frame_time, fps)
    if frame_time.shape[0] == 1:  # one frame: one grid step, itself
        return grid, features.astype(np.float32)
    # A hole is a gap of more than 1.5 steps of the coarser of the frames' (median) and the grid's: a variable-rate
    # video whose frames come 25 then 50 ms apart has a frame near every step of a 40 ms grid.
    step = max(float(np.median(np.diff(frame_time))), 1.0 / fps)
    return grid, labels_on_frames(frame_time, features, grid, step=step).astype(np.float32)


def on_frames(grid: np.ndarray, values: np.ndarray, frame_time: np.ndarray) -> np.ndarray:
    """(N,) model outputs at the decoded frames' times from ``values`` (G,) on ``grid`` (G,)."""
    if grid.shape[0] == 1:
        return np.full(frame_time.shape[0], values[0], dtype=np.float64)
    return labels_on_frames(grid, np.asarray(values, np.float64), frame_time)
