"""What an ingest (or a migration) did: :class:`IngestResult`, made in one place, :meth:`IngestResult.of`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from affect_core import storage
from affect_core.data.dataset.write import Written


@dataclass
class IngestResult:
    """What an ingest did. ``unchanged`` is True when the input matched the latest version (nothing
    written); ``videos_written`` counts the videos whose rows went into new files."""

    dataset_url: str
    version: str
    content_hash: str
    unchanged: bool
    rows: int
    videos: int
    seconds: float
    source_bytes: int
    videos_written: int = 0
    files_written: int = 0
    notes: list[str] = field(default_factory=list)  # what the reader skipped, one line each
    mb_per_s: float = field(init=False)  # source megabytes read per second of the ingest

    def __post_init__(self) -> None:
        self.mb_per_s = self.source_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def of(
        cls,
        dataset_url: str,
        written: Written,
        *,
        rows: int,
        videos: int,
        source_bytes: int,
        started: float,
        notes: Iterable[str] = (),
    ) -> IngestResult:
        """The result of an ingest that began at ``started`` (``time.perf_counter()``) and wrote ``written`` to
        ``dataset_url`` (shown redacted)."""
        return cls(
            dataset_url=storage.redact(dataset_url),
            version=written.version,
            content_hash=written.content_hash,
            unchanged=written.unchanged,
            rows=int(rows),
            videos=int(videos),
            seconds=time.perf_counter() - started,
            source_bytes=int(source_bytes),
            videos_written=written.videos_written,
            files_written=written.files_written,
            notes=list(notes),
        )

    def summary(self) -> str:
        """One line for the CLI."""
        if self.unchanged:
            return (
                f"unchanged: {self.dataset_url} version {self.version} already holds this input "
                f"({self.videos} videos, {self.rows} rows)"
            )
        return (
            f"ingested {self.dataset_url} version {self.version}: {self.videos} videos, {self.rows} rows, "
            f"{self.source_bytes / 1e6:.1f} MB in {self.seconds:.2f} s ({self.mb_per_s:.1f} MB/s); "
            f"{self.videos_written} video(s) written in {self.files_written} file(s)"
        )
