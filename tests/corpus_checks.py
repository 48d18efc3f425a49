"""Assertions and source set-up shared by the data tests."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def assert_same_corpus(a, b) -> None:
    """Same feature names, videos (ids, splits, order), features, frame times and label tracks, value for value."""
    assert a.feature_names == b.feature_names
    assert [(v.video_id, v.split) for v in a.videos] == [(v.video_id, v.split) for v in b.videos]
    for va, vb in zip(a.videos, b.videos, strict=True):
        np.testing.assert_array_equal(va.features, vb.features)
        np.testing.assert_array_equal(va.time_s, vb.time_s)
        for dimension in ("arousal", "valence"):
            la, lb = va.labels(dimension), vb.labels(dimension)
            assert (la is None) == (lb is None)
            if la is not None:
                np.testing.assert_array_equal(la, lb)


def make_source(root: Path, layout: str = "csv", videos_per_split: int = 2) -> Path:
    """A small generated per-video source at ``root``: ``videos_per_split`` videos in each split, 80 frames of 5
    features (3 appearance, 2 geometric), in ``layout`` (openface at 30 fps, the rate its timestamps carry)."""
    from affect_core.synth import SynthConfig, write_corpus

    config = SynthConfig(videos_per_split=videos_per_split, frames=80, appearance_dim=3, geometric_dim=2, seed=7)
    write_corpus(config.with_(fps=30.0) if layout == "openface" else config, root, layout)
    return root


def touch(path: Path) -> None:
    """A new modification time (one second later), the same bytes: a re-ingest must read the file to know it is
    unchanged."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def change_one_value(path: Path, line: int = 2) -> Path:
    """Change the last value of one data line of a CSV source file (0.5, or 0.25 where it was 0.5 already): the
    video's content changes, its size may not. Returns ``path``."""
    lines = path.read_text().splitlines()
    cells = lines[line].split(",")
    cells[-1] = "0.5" if cells[-1] != "0.5" else "0.25"
    lines[line] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class IngestedSource:
    """A csv source made by :func:`make_source` and ingested once (single process) into a local table: the
    set-up of the re-ingest tests (tests/conftest.py's ``ingested_source`` fixture)."""

    root: Path
    url: str
    first: Any  # the first ingest's IngestResult

    def ingest(self, **options: Any) -> Any:
        """Ingest the source into the table again (single process, csv layout, ``options`` added)."""
        from affect_core.data import dataset as ds

        return ds.ingest(str(self.root), self.url, layout="csv", progress=False, **options)

    def touch_and_reingest(self, relative: str, **options: Any) -> Any:
        """:func:`touch` the source file ``relative`` (same bytes, new time), then :meth:`ingest`."""
        touch(self.root / relative)
        return self.ingest(**options)
