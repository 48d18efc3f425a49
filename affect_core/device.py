"""The one device rule: where a job's model and its tensors live.

Every job (train, tune, score, a folder of videos, Ray Data's actors, Ray Train's workers) asks this module, and only
this module interprets ``"auto"``. A runtime that hands a worker its own device (Ray Train's ``get_device()``, the GPU
Ray assigned to a scoring actor) passes it as ``assigned``; ``"auto"`` then takes it."""

from __future__ import annotations

import torch

from affect_core.errors import AffectError

AUTO = "auto"


def resolve_device(
    requested: str | torch.device | None = AUTO, *, assigned: str | torch.device | None = None
) -> torch.device:
    """The device to run on.

    requested: what the user asked for (``--device``): a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``meta``),
    or ``"auto"`` / None. assigned: the device the runtime gave this worker, if any.
    ``"auto"`` is ``assigned`` when given, else the GPU when one is visible, else the CPU. Asking for a GPU where none
    is visible is an :class:`AffectError` (the CLI reports it in one line)."""
    if requested is not None and str(requested) != AUTO:
        try:
            chosen = torch.device(requested)
        except (RuntimeError, TypeError):
            raise AffectError(
                f"device {str(requested)!r}: not a device name (expected auto, cpu, cuda or cuda:N)"
            ) from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise AffectError(f"device {str(requested)!r}: no CUDA GPU is visible here; use --device cpu or auto")
        return chosen
    if assigned is not None:
        return torch.device(assigned)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
