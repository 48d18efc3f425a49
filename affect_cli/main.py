"""The ``affect`` command line: one door to every stage. Heavy imports happen inside the commands, so ``--help`` is
instant. Every command reports an AffectError as one line on stderr and exits with status 1."""

from __future__ import annotations

import functools
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer
import typer.core

from affect_cli import cmd_data, cmd_flows, cmd_ingest, cmd_synth, cmd_train, cmd_tune
from affect_core.runtime import flush_denormals, limit_malloc_arenas, retain_freed_memory

# click's UsageError, whether typer uses click or its own copy of it (typer exports only its subclass BadParameter).
UsageError = next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "UsageError")


class OneLineUsageErrors(typer.core.TyperGroup):
    """A wrong argument or option of a command (a value out of range, a missing argument, an unknown option) is
    reported like every other error: one line naming the argument and what was expected, exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            typer.echo(f"error: {command}: {' '.join(exc.format_message().split())}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="affect",
    cls=OneLineUsageErrors,
    help="Continuous affect recognition from facial video features (LSTM + Bayesian filter + adaptive alignment).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: rich's tables squeeze the option names and cut them at 80 columns.
    rich_markup_mode=None,
)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report the project's error type (and a few plain I/O errors) as one line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from affect_core.errors import AffectError

        try:
            return command(*args, **kwargs)
        except AffectError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            from affect_core.storage import is_store_error, redact

            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                # Whoever read the output stopped (`affect info URL --json | head`): end quietly with the status of a
                # program stopped by SIGPIPE; output still buffered goes nowhere.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(128 + signal.SIGPIPE) from None
            if _is_ray_connection_failure(exc):
                # Ray's ConnectionError is an OSError too: without this it would read as a storage failure.
                message = " ".join(redact(str(exc)).split())[:300]
                typer.echo(
                    f"error: Ray: {message}; check RAY_ADDRESS and, where the cluster uses token authentication, "
                    "RAY_AUTH_MODE=token and the token file (~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)",
                    err=True,
                )
                raise typer.Exit(1) from None
            if not is_store_error(exc):
                raise
            # The store failed (e.g. S3 unreachable): one line; the command can be re-run once it is back.
            message = " ".join(redact(str(exc)).split())[:300]
            typer.echo(f"error: storage failed ({type(exc).__name__}: {message}); run the command again", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _is_ray_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray failing to reach or join its cluster (raised by Ray, or Ray's own "Failed to connect to
    Ray cluster" ConnectionError), not a storage failure."""
    if "Ray cluster" in str(exc):
        return True
    if type(exc).__module__.split(".")[0] != "ray":
        return False
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ == "AuthenticationError"


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reading end was closed."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's captured output), no poll
        return False


# (name, command): one line per command of `affect`.
COMMANDS = [
    ("synth", cmd_synth.synth),
    ("ingest", cmd_ingest.ingest),
    ("train", cmd_train.train),
    ("score", cmd_train.score),
    ("evaluate", cmd_train.evaluate),
    ("promote", cmd_train.promote),
    ("info", cmd_data.info),
    ("export", cmd_data.export),
    ("migrate", cmd_data.migrate),
    ("vacuum", cmd_data.vacuum),
    ("tune", cmd_tune.tune),
    ("report", cmd_flows.report),
    ("pipeline", cmd_flows.pipeline),
    ("serve", cmd_flows.serve),
    ("demo", cmd_flows.demo),
]
for name, command in COMMANDS:
    app.command(name)(one_line_errors(command))


def main() -> None:  # pragma: no cover - console entry point
    limit_malloc_arenas()
    retain_freed_memory()
    flush_denormals()
    app()


if __name__ == "__main__":  # pragma: no cover
    limit_malloc_arenas()
    retain_freed_memory()
    flush_denormals()
    sys.exit(app())
