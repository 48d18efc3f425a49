"""Tensor aliases so that filter signatures read like the maths (shapes in the names' docstrings)."""

from __future__ import annotations

from torch import Tensor

ObservationsTorch = Tensor
"""Observations o_t for t = 1..T. Shape `(B, T, obs_dim)`."""

MaskTorch = Tensor
"""Bool, True where frame t of sequence b is observed. Shape `(B, T)`."""

StatesTorch = Tensor
"""Filtered states z_t for t = 1..T. Shape `(B, T, state_dim)`."""

CovarianceTorch = Tensor
"""Filtered covariances P_t for t = 1..T. Shape `(B, T, state_dim, state_dim)`."""
