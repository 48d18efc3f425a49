"""The video transform of a dataset made from videos, stored beside it (DATASET/_video_transforms/<content
hash>.safetensors), and copied into the bundles of the models trained on it.

The file is one of the version's attachments (:mod:`affect_core.data.dataset.write`): ingest writes it, named from the
content hash of the version it belongs to, before the commit that publishes that version, so a version ingested from
videos is never visible without its transform. Readers find it from the version's content hash."""

from __future__ import annotations

from typing import Any

from affect_core import storage
from affect_core.data import delta
from affect_core.errors import AffectError
from affect_core.video.transform import TRANSFORMS_DIR, VideoTransform, save_bundle_transform


def transform_file(content_hash: str) -> str:
    """The path, relative to the dataset's root, of the video transform of the version whose content hash is
    ``content_hash``."""
    return f"{TRANSFORMS_DIR}/{content_hash.split(':')[-1]}.safetensors"


def dataset_transform_path(dataset: delta.VersionedLocation) -> tuple[storage.Location, str, str | None]:
    """(Location of the dataset, path of its version's video transform file (the file may not exist), the version)
    of the dataset's latest version (or the one its URL pins)."""
    from affect_core.data.dataset import dataset_info

    info = dataset_info(dataset)
    return dataset.loc, storage.join(dataset.loc.path, transform_file(info.content_hash)), info.version


def load_dataset_transform(
    dataset_url: str | storage.Location | delta.VersionedLocation, storage_options: dict[str, Any] | None = None
) -> VideoTransform:
    """The video transform of the dataset's latest version (``dataset_url`` resolved here, or resolved before);
    AffectError if the dataset was not ingested from videos."""
    loc, path, version = dataset_transform_path(delta.resolve_versioned(dataset_url, storage_options))
    if not storage.exists(loc.fs, path):
        raise AffectError(
            f"{loc.display()}: no video transform for version {version}; expected a dataset ingested with "
            "--layout video"
        )
    return VideoTransform.from_bytes(storage.read_bytes(loc.fs, path), loc.display(TRANSFORMS_DIR))


def attach_to_bundle(
    dataset_url: str | storage.Location | delta.VersionedLocation,
    model_url: storage.Where,
    storage_options: dict[str, Any] | None = None,
) -> bool:
    """Copy the dataset's video transform into the model bundle, if the dataset came from videos; returns whether.
    Each URL is resolved here, once, with ``storage_options`` (a Location given instead was resolved before)."""
    dataset = delta.resolve_versioned(dataset_url, storage_options)
    loc, path, _ = dataset_transform_path(dataset)
    if not storage.exists(loc.fs, path):
        return False
    transform = VideoTransform.from_bytes(storage.read_bytes(loc.fs, path), loc.display(TRANSFORMS_DIR))
    save_bundle_transform(transform, storage.resolve(model_url, storage_options))
    return True
