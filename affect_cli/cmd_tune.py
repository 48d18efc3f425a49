"""``affect tune``: the tune job of :mod:`flows.jobs` (a Ray Tune search, Optuna + ASHA), run and summarised."""

from __future__ import annotations

import typer

from affect_cli.job_options import job_command
from flows.jobs import TuneJob


def _tune(job: TuneJob) -> None:
    from flows.jobs import run_tune

    outcome = run_tune(job)
    typer.echo(
        f"tuned {outcome.trials} trial(s) ({outcome.stopped_early} stopped early, {outcome.errored} failed): "
        f"best dev CCC {outcome.best_dev_ccc:.4f} (trial {outcome.best_trial}); best config "
        f"{outcome.best_config_url}, trials {outcome.trials_url}, plot {outcome.plot_url}"
    )


tune = job_command(TuneJob, _tune)
