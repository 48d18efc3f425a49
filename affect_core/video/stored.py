"""The video transform of a dataset made from videos, stored beside it (DATASET/_video_transforms/<content
hash>.safetensors), and copied into the bundles of the models trained on it.

The file is one of the version's attachments (:mod:`affect_core.data.dataset.write`): ingest writes it, named from the
content hash of the version it belongs to, before the commit that publishes that version, so a version ingested from
videos is never visible without its transform. Readers find it from the version's content hash."""

from __future__ import annotations

from typing import Any

from affect_core import storage
from affect_core.errors import AffectError
from affect_core.video.transform import TRANSFORMS_DIR, VideoTransform, save_bundle_transform


def transform_file(content_hash: str) -> str:
    """The path, relative to the dataset's root, of the video transform of the version whose content hash is
    ``content_hash``."""
    return f"{TRANSFORMS_DIR}/{content_hash.split(':')[-1]}.safetensors"


def dataset_transform_path(dataset_url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(Location of the dataset, path of its latest version's video transform file; the file may not exist)."""
    from affect_core.data.dataset import dataset_info

    info = dataset_info(dataset_url, storage_options=storage_options)
    loc = storage.resolve(dataset_url, storage_options)
    return loc, storage.join(loc.path, transform_file(info.content_hash))


def load_dataset_transform(dataset_url: str, storage_options: dict[str, Any] | None = None) -> VideoTransform:
    """The video transform of the dataset's latest version; AffectError if the dataset was not ingested from videos."""
    from affect_core.data.dataset import dataset_info

    loc, path = dataset_transform_path(dataset_url, storage_options)
    if not storage.exists(loc.fs, path):
        info = dataset_info(dataset_url, storage_options=storage_options)
        raise AffectError(
            f"{loc.display()}: no video transform for version {info.version}; expected a dataset ingested with "
            "--layout video"
        )
    return VideoTransform.from_bytes(storage.read_bytes(loc.fs, path), loc.display(TRANSFORMS_DIR))


def attach_to_bundle(dataset_url: str, model_url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Copy the dataset's video transform into the model bundle, if the dataset came from videos; returns whether."""
    loc, path = dataset_transform_path(dataset_url, storage_options)
    if not storage.exists(loc.fs, path):
        return False
    save_bundle_transform(load_dataset_transform(dataset_url, storage_options), model_url, storage_options)
    return True
