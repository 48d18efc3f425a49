"""The driver of a job submitted as a Ray job (:mod:`flows.ray_job`): ``python -m flows.ray_job_driver '<job as
JSON>'`` runs the job of :mod:`flows.jobs` on the cluster and prints its result (or one error line)."""

from __future__ import annotations

import dataclasses
import json
import sys

from affect_core.errors import AffectError
from flows import jobs
from flows.ray_job import RESULT_MARK
from flows.runner import on_cluster


def main(argv: list[str]) -> int:
    """Run the job given as JSON; print its result as the last line (or one error line)."""
    request = json.loads(argv[0])
    kind = getattr(jobs, request["kind"])
    job = on_cluster(kind(**request["job"]))  # its Ray switch on: it runs as a Ray driver here
    try:
        result = jobs.run(job)
    except AffectError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    plain = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
    print(RESULT_MARK + json.dumps(plain, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
