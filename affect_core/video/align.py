"""Crop and align: the face box of a frame resampled to a fixed ``size x size`` grey image.

The box is made square about its centre (the detector's boxes are square already) and clipped to the frame by edge
replication. A box much larger than ``size`` is first shrunk by an integer block mean (anti-aliasing), then sampled
bilinearly on the ``size x size`` grid, so that faces of any size in the frame give comparable images.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from affect_core.video.detect import Box, shrink


def align_face(gray: np.ndarray, box: Box, size: int) -> np.ndarray:
    """gray: (H, W) uint8 frame, box in its pixel coordinates -> (size, size) float32 face in [0, 1]."""
    side = max(box.height, box.width)
    centre_r = box.top + box.height / 2.0
    centre_c = box.left + box.width / 2.0
    factor = max(1, int(side // (2 * size)))
    if factor > 1:
        top = max(0, int(centre_r - side / 2) - factor)
        left = max(0, int(centre_c - side / 2) - factor)
        bottom = min(gray.shape[0], int(centre_r + side / 2) + 2 * factor)
        right = min(gray.shape[1], int(centre_c + side / 2) + 2 * factor)
        image = shrink(gray[top:bottom, left:right], factor)
        origin_r, origin_c, scale = float(top), float(left), float(factor)
    else:
        image = gray.astype(np.float32) / np.float32(255.0)
        origin_r, origin_c, scale = 0.0, 0.0, 1.0
    # Pixel centres of the output grid, in the (possibly shrunk) image's coordinates.
    steps = (np.arange(size, dtype=np.float64) + 0.5) * (side / size) - side / 2
    rows = (centre_r + steps - origin_r) / scale - 0.5
    cols = (centre_c + steps - origin_c) / scale - 0.5
    grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
    face = map_coordinates(image, [grid_r.ravel(), grid_c.ravel()], order=1, mode="nearest")
    return face.reshape(size, size).astype(np.float32)
