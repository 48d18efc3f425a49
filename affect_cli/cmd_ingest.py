"""`affect ingest`: the ingest job of :mod:`flows.jobs` (validate a corpus in an input layout and write it as a
versioned Parquet dataset); its options are the job's fields. affect_core is imported when the command runs, so
importing this module (and `affect --help`) stays instant."""

from __future__ import annotations

import typer

from affect_cli.job_options import job_command
from flows.jobs import IngestJob


def _ingest(job: IngestJob) -> None:
    from flows.jobs import run_ingest

    result = run_ingest(job)
    for note in result.notes:
        typer.echo(note)
    typer.echo(result.summary())


ingest = job_command(IngestJob, _ingest)
