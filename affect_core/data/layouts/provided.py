"""Input layouts that a package above ``affect_core.data`` provides: the ``video`` layout (decoding and feature
extraction live in ``affect_core.video``, which sits above data and registers its layout here when
``affect_core.video.layout`` is imported) and the ``affwild2`` layout (Aff-Wild2 as released, registered by
``affect_core.video.affwild2``). Data reads such a layout through this table, never by importing it:
:func:`affect_core.data.readers.read_source` asks it for a whole corpus, :func:`affect_core.data.dataset.ingest` for
an ingest plan (the videos, a reader that reads them one at a time, the files stored with the version)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from affect_core.data.records import Corpus
from affect_core.errors import AffectError

# The layouts provided above data, by name, with the module that registers each (for messages only).
PROVIDERS = {"video": "affect_core.video.layout", "affwild2": "affect_core.video.affwild2"}


@dataclass(frozen=True)
class LayoutOptions:
    """Options of an ingest that only a provided layout reads. mapper: runs the layout's per-video work and yields
    the results in order (the builtin ``map``, the default, or a Ray mapper); device: where that work computes
    (None: the device rule's choice); config: the layout's own settings (the video layout's ``VideoConfig``; None:
    its defaults); progress: show a progress bar over videos."""

    mapper: Callable[..., Any] | None = None
    device: str | None = None
    config: Any = None
    progress: bool = False


class ProvidedLayout(Protocol):
    """What a provided layout implements (see the module docstring)."""

    name: str

    def read_corpus(self, root: str, *, storage_options: dict[str, Any] | None) -> Corpus:
        """The whole corpus, read and validated (what ``read_source`` returns)."""
        ...

    def plan(self, request: Any, options: LayoutOptions) -> Any:
        """An ingest plan (``affect_core.data.dataset.SourcePlan``) for ``request``
        (``affect_core.data.source_videos.SourceRequest``)."""
        ...


_REGISTERED: dict[str, ProvidedLayout] = {}


def register(layout: ProvidedLayout) -> None:
    """Make ``layout`` readable by name (what its providing module does when imported)."""
    _REGISTERED[layout.name] = layout


def provided(name: str) -> ProvidedLayout | None:
    """The provided layout ``name``; None for a layout data reads itself (or an unknown name). AffectError for a
    layout provided above data whose module was not imported in this process."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in PROVIDERS:
        raise AffectError(
            f"layout {name!r}: not available in this process; it is provided by {PROVIDERS[name]}, which registers "
            "it when imported (import it before reading this layout)"
        )
    return None
