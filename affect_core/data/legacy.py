"""Reading datasets in the earlier layout (format ``affect-dataset/1``), for ``affect migrate``.

That layout kept one Parquet file per video and a JSON manifest per version::

    DATASET_URL/_manifests/<version>.json
    DATASET_URL/versions/<version>/split=<split>/video_id=<id>/part-0.parquet

Only reading is kept: :func:`affect_core.data.dataset.migrate` streams the latest version's videos into a table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from affect_core import storage
from affect_core.errors import AffectError

FORMAT = "affect-dataset/1"
MANIFESTS = "_manifests"


def is_legacy(loc: storage.Location) -> bool:
    """Whether ``loc`` holds a dataset in the earlier layout (a ``_manifests/`` folder with a manifest)."""
    return any(
        kind == "file" and name.endswith(".json")
        for name, kind in storage.list_dir(loc.fs, storage.join(loc.path, MANIFESTS))
    )


def latest_manifest(loc: storage.Location) -> dict[str, Any]:
    """The newest manifest of a dataset in the earlier layout."""
    names = sorted(
        name
        for name, kind in storage.list_dir(loc.fs, storage.join(loc.path, MANIFESTS))
        if kind == "file" and name.endswith(".json") and not name.startswith(".")
    )
    if not names:
        raise AffectError(f"{loc.display()}: no manifest in {MANIFESTS}/; not a dataset of format {FORMAT}")
    where = loc.display(MANIFESTS, names[-1])
    try:
        manifest = json.loads(storage.read_bytes(loc.fs, storage.join(loc.path, MANIFESTS, names[-1])))
    except (ValueError, UnicodeDecodeError):
        raise AffectError(f"{where}: unreadable manifest; expected JSON written by affect ingest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise AffectError(f"{where}: not a manifest of format {FORMAT}")
    return manifest


def iter_video_tables(loc: storage.Location, manifest: dict[str, Any]) -> Iterator[tuple[dict[str, Any], pa.Table]]:
    """(manifest entry, the video's rows) for each video of ``manifest``, one file at a time."""
    base = storage.join(loc.path, manifest["data_path"])
    for entry in manifest["files"]:
        where = loc.display(manifest["data_path"], entry["path"])
        try:
            with loc.fs.open(storage.join(base, entry["path"]), "rb") as handle:
                table = pq.read_table(handle)
        except FileNotFoundError:
            raise AffectError(f"{where}: listed in the manifest but missing; the dataset is damaged") from None
        except (OSError, pa.ArrowException) as exc:
            raise AffectError(f"{where}: unreadable ({type(exc).__name__})") from None
        yield entry, table


def remove(loc: storage.Location, manifest: dict[str, Any]) -> None:
    """Delete the earlier layout's manifests and version folders (after a migration committed)."""
    storage.remove_tree(loc.fs, storage.join(loc.path, MANIFESTS))
    storage.remove_tree(loc.fs, storage.join(loc.path, "versions"))
