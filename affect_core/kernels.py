"""The package's compiled CPU kernels (numba) in one place for install time: `warm_up` compiles them, or loads them
from numba's on-disk cache, so that no training or scoring run pays the compilation."""

from __future__ import annotations


def warm_up() -> None:
    """Compile the filter kernels (`affect_core.filters.compiled`) and the seed stack's LSTM (`_seed_lstm`)."""
    import numpy as np

    from affect_core import _seed_lstm
    from affect_core.filters.compiled import warm_up as warm_up_filters

    warm_up_filters()
    w_hh = np.zeros((1, 8, 2), dtype=np.float32)
    inputs, w_ih = np.zeros((1, 3, 1), dtype=np.float32), np.zeros((1, 8, 3), dtype=np.float32)
    state = np.zeros((1, 1, 2), dtype=np.float32)
    acts, cells = np.zeros((1, 1, 1, 8), dtype=np.float32), np.zeros((1, 1, 1, 2), dtype=np.float32)
    tanh_cells, hidden = np.zeros_like(cells), np.zeros_like(cells)
    _seed_lstm.recurrent_forward(
        np.zeros((1, 8), dtype=np.float32), w_hh[0], state[0], state[0], acts[0], cells[0], tanh_cells[0], hidden[0]
    )
    _seed_lstm.fused_backward(np.ones_like(hidden), inputs, w_ih, w_hh, state, state, acts, cells, tanh_cells, hidden)
