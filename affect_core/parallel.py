"""Data-parallel training: the workers of one training job, each holding its shard of the videos.

A :class:`Workers` wraps an initialised ``torch.distributed`` process group (Ray Train's ``TorchTrainer`` sets one up
per worker: gloo on CPUs, NCCL on GPUs; ``torchrun`` or a test harness can too). The training loop
(:func:`affect_core.training.train_seeds`) uses it for what crosses workers:

- the feature transform, fitted from statistics each worker computes on its shard and summed (an aggregate);
- the order of the truncated-BPTT windows, drawn from every worker's video lengths with the seed's generator, so that
  every worker draws the same windows and trains on those of its own videos;
- per step, the loss's normalising counts and then the gradients, summed: the update is the one a single worker
  holding every video would make, up to float summation order;
- per epoch, the per-video metrics of the dev split, gathered, so that early stopping decides the same everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import torch


class Workers:
    """The workers of a ``torch.distributed`` process group (the default group unless one is given)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("data-parallel training needs an initialised torch.distributed process group")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)

    @property
    def leader(self) -> bool:
        """The worker that writes checkpoints and results (rank 0)."""
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over the workers, in place (every worker gets the sum)."""
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM, group=self.group)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every worker's ``value`` (a small picklable object), in rank order, on every worker."""
        out: list[Any] = [None] * self.size
        self._dist.all_gather_object(out, value, group=self.group)
        return out


def natural_key(text: str) -> list[object]:
    """Sort key of video ids that orders "dev_2" before "dev_10": the order in which every worker merges what it
    gathers (and the order of the corpora's own listings)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
