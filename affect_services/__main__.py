"""``python -m affect_services up|down|status DIR``: the local stack (see affect_services/stack.py), used by
``make stack-up``, ``make stack-down`` and ``make stack-status`` (infra/Makefile.stack)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from affect_services.process import ServiceError, export_lines
from affect_services.stack import ENV_FILE, read_state, recorded_pids_alive, stack_down, stack_up

logger = logging.getLogger("affect_services")


def main(argv: list[str] | None = None) -> int:
    """``up DIR`` / ``down DIR`` / ``status DIR`` for the local stack; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m affect_services",
        description="The local stack: SeaweedFS S3, a Prefect server and a Ray cluster with its job server, "
        "all on 127.0.0.1.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start SeaweedFS, a Prefect server and a Ray cluster; print the env")
    up.add_argument("directory", type=Path)
    up.add_argument("--worker-nodes", type=int, default=1)
    up.add_argument("--head-cpus", type=int, default=1)
    up.add_argument("--worker-cpus", type=int, default=1)
    for name, help_text in (
        ("down", "stop exactly the recorded processes"),
        ("status", "list the endpoints and the recorded live pids"),
    ):
        commands.add_parser(name, help=help_text).add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "up":
            options = {
                "worker_nodes": args.worker_nodes,
                "head_cpus": args.head_cpus,
                "worker_cpus": args.worker_cpus,
            }
            env = stack_up(args.directory, **options)
            sys.stdout.write(export_lines(env))
            logger.info("environment also written to %s", args.directory / ENV_FILE)
        elif args.command == "down":
            stopped = stack_down(args.directory)
            logger.info("stopped %d processes; none left", len(stopped))
        else:
            state = read_state(args.directory)
            alive = recorded_pids_alive(args.directory)
            for name, endpoint in state["endpoints"].items():
                logger.info("%s: %s", name, endpoint)
            logger.info("live pids: %s", alive or "none")
            return 0 if alive else 1
    except ServiceError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
