"""``affect train``, ``affect score``, ``affect evaluate`` and ``affect promote``: each command is its job of
:mod:`flows.jobs` (options derived from the job's fields by :mod:`affect_cli.job_options`), run and summarised."""

from __future__ import annotations

import typer

from affect_cli.job_options import job_command
from flows.jobs import EvaluateJob, PromoteJob, ScoreJob, TrainJob


def _train(job: TrainJob) -> None:
    from flows.jobs import run_train

    outputs = run_train(job)
    typer.echo(
        f"trained {job.dimension} x {job.seeds} seed(s): "
        f"results {outputs['results']}, summary {outputs['summary']}, model {outputs['model']}"
    )


# Exit status of `affect score` when some videos of a folder could not be read (the others were scored): not 1 (an
# error, nothing written) nor 2 (a usage error).
SOME_FAILED_EXIT = 3


def _score(job: ScoreJob) -> None:
    from flows.jobs import run_score

    result = run_score(job)
    typer.echo(
        f"scored {result.videos} video(s), {result.frames} frame(s) in {result.seconds:.1f} s "
        f"({result.frames_per_second:.0f} frames/s, {result.skipped} already done) -> {result.url}"
    )
    failed = getattr(result, "failed", None) or []
    for failure in failed:
        typer.echo(f"failed: {failure['problem']}", err=True)
    if failed:
        typer.echo(f"{len(failed)} video(s) could not be read; listed in {result.url}/_failures.json", err=True)
        raise typer.Exit(SOME_FAILED_EXIT)
    if getattr(result, "calibrated", None) is False:
        typer.echo(
            "note: the model bundle has no calibration (trained before it existed): arousal_var and valence_var are "
            "the filter's uncalibrated state variance, not the label's; train again for calibrated intervals"
        )


def _evaluate(job: EvaluateJob) -> None:
    from affect_core.scoring import evaluation_markdown
    from flows.jobs import run_evaluate

    typer.echo(evaluation_markdown(run_evaluate(job)), nl=False)


def _promote(job: PromoteJob) -> None:
    from affect_core.storage import redact
    from flows.jobs import run_promote

    state = run_promote(job)
    action = state.history[-1]["action"]
    typer.echo(f"{state.alias_url} -> {redact(state.model)} ({action}; {len(state.history)} change(s) kept)")


train = job_command(TrainJob, _train)
score = job_command(ScoreJob, _score)
evaluate = job_command(EvaluateJob, _evaluate)
promote = job_command(PromoteJob, _promote)
