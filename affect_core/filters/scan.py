"""Parallel prefix scan over the time dimension for any associative operator on tuples of tensors.

Work-efficient recursive (odd/even) formulation, as in `jax.lax.associative_scan`: about 2 T applications of the
operator in 2 log2(T) batched calls, each call a handful of tensor operations over all elements of a level at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Elements = tuple[Tensor, ...]
Combine = Callable[[Elements, Elements], Elements]


def _take(elements: Elements, index: slice) -> Elements:
    return tuple(e[:, index] for e in elements)


def _interleave(even: Tensor, odd: Tensor) -> Tensor:
    """Merge along dim 1: result[2k] = even[k], result[2k + 1] = odd[k]; len(even) - len(odd) is 0 or 1."""
    paired = torch.stack((even[:, : odd.shape[1]], odd), dim=2).flatten(1, 2)
    if even.shape[1] > odd.shape[1]:
        paired = torch.cat((paired, even[:, -1:]), dim=1)
    return paired


def associative_scan(combine: Combine, elements: Sequence[Tensor]) -> Elements:
    """Inclusive prefix scan along dim 1: output[t] = e[0] o e[1] o ... o e[t].

    Args:
        combine: Associative operator; `combine(earlier, later)` takes two tuples of tensors whose dim 1 has equal
            length and returns their elementwise combination. Leading (batch) dims may broadcast.
        elements: Tensors of shape `(batch..., T, ...)` with time in dim 1; the batch dim 0 may differ between
            tensors if `combine` broadcasts it.

    Returns:
        Tuple of prefix tensors, same shapes as `elements` (batch dims as produced by `combine`).
    """
    elements = tuple(elements)
    length = elements[0].shape[1]
    if length < 2:
        return elements
    pairs = combine(_take(elements, slice(0, -1, 2)), _take(elements, slice(1, None, 2)))
    odd = associative_scan(combine, pairs)  # prefixes ending at t = 1, 3, 5, ...
    rest = _take(elements, slice(2, None, 2))
    if rest[0].shape[1] > 0:
        from_odd = odd if length % 2 == 1 else _take(odd, slice(0, -1))
        tail = combine(from_odd, rest)  # prefixes ending at t = 2, 4, ...
    else:
        tail = None
    even = []
    for k, (first, prefix) in enumerate(zip(elements, odd, strict=True)):
        head = first[:, :1].expand((prefix.shape[0], 1) + first.shape[2:])
        even.append(head if tail is None else torch.cat((head, tail[k]), dim=1))
    return tuple(_interleave(ev, od) for ev, od in zip(even, odd, strict=True))
