"""Opening a dataset once: the version a read sees (``version=`` or ``URL@VERSION``, else the latest), or a bare
Parquet features URL (no table); the versions a dataset holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affect_core import storage
from affect_core.data import delta, legacy
from affect_core.errors import AffectError


@dataclass
class OpenedTable:
    """A resolved table version (``snapshot``) or a bare Parquet features URL (``snapshot`` None)."""

    loc: storage.Location
    snapshot: delta.Snapshot | None
    versions: list[str]

    @property
    def metadata(self) -> dict[str, str]:
        """The version's metadata (the table's description), as strings."""
        assert self.snapshot is not None
        return {str(k): str(v) for k, v in self.snapshot.metadata.items()}


Dataset = str | storage.Location | delta.VersionedLocation
"""A dataset (or predictions table) as an entry point accepts it: ``URL[@VERSION]``, or resolved before."""


def open_table(dataset: delta.VersionedLocation, version: str | int | None) -> OpenedTable:
    """Open the resolved ``dataset`` at its pinned version (``URL@VERSION``), or ``version`` (both must agree)."""
    loc, pinned = dataset.loc, dataset.version
    wanted = delta.parse_version(version, loc.display())
    if pinned is not None:
        if wanted is not None and wanted != pinned:
            raise AffectError(f"{loc.display()}: version {version} given, but the URL names version {pinned}")
        wanted = pinned
    if delta.is_table(loc):
        snap = delta.snapshot(loc, wanted)
        assert snap is not None
        return OpenedTable(loc, snap, [str(v) for v in delta.versions(loc)])
    if legacy.is_legacy(loc):
        raise AffectError(
            f"{loc.display()}: a dataset in the earlier per-video layout ({legacy.FORMAT}); convert it with "
            f"`affect migrate {loc.display()}`"
        )
    if wanted is not None:
        raise AffectError(f"{loc.display()}: no dataset versions (no _delta_log/); cannot select version {wanted}")
    if not storage.exists(loc.fs, loc.path):
        raise AffectError(f"{loc.display()}: does not exist; expected a dataset written by affect ingest")
    return OpenedTable(loc, None, [])


def open_versioned_table(dataset: delta.VersionedLocation, version: str | int | None) -> OpenedTable:
    """:func:`open_table` for a table only (a dataset or predictions): AffectError for a bare Parquet URL."""
    opened = open_table(dataset, version)
    if opened.snapshot is None:
        raise AffectError(f"{opened.loc.display()}: not a table (no _delta_log/); expected a dataset or predictions")
    return opened


def list_versions(dataset_url: Dataset, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Readable versions of a dataset, oldest first (as strings: "0", "1", ...)."""
    return [str(v) for v in delta.versions(delta.resolve_versioned(dataset_url, storage_options).loc)]
