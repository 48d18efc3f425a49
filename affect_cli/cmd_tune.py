"""``affect tune``: a Ray Tune search (Optuna + ASHA) over the model's hyperparameters."""

from __future__ import annotations

from typing import Annotated

import typer


def tune(
    dataset_url: Annotated[str, typer.Argument(help="Dataset written by `affect ingest` (path or fsspec URL).")],
    out: Annotated[
        str, typer.Option("--out", help="Run URL: best_config.yaml, trials.parquet, tuning.png, trials/ go here.")
    ],
    num_samples: Annotated[int, typer.Option(min=1, help="Number of trials.")] = 20,
    max_concurrent: Annotated[int, typer.Option(min=1, help="Trials running at once.")] = 2,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs per trial (ASHA stops weak trials sooner).")] = 20,
    dimension: Annotated[str, typer.Option(help="arousal | valence | joint.")] = "arousal",
    config: Annotated[str | None, typer.Option(help="YAML/JSON base config; the search varies its values.")] = None,
    feature_set: Annotated[str | None, typer.Option(help="Feature set name(s), comma-joined for fusion.")] = None,
    grace_period: Annotated[int, typer.Option(min=1, help="ASHA: epochs before a trial may be stopped.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the Optuna sampler.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted search stored in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show Tune's progress table.")] = True,
) -> None:
    """Search hyperparameters on Ray Tune; write the best configuration for `affect train --config`."""
    from affect_core.config import load_run_config
    from tuning.tune import run_tune

    outcome = run_tune(
        dataset_url,
        out,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        max_epochs=epochs,
        dimension=dimension,
        resume=resume,
        base_config=load_run_config(config),
        feature_set=feature_set,
        grace_period=grace_period,
        seed=seed,
        progress=progress,
    )
    typer.echo(
        f"tuned {outcome.trials} trial(s) ({outcome.stopped_early} stopped early, {outcome.errored} failed): "
        f"best dev CCC {outcome.best_dev_ccc:.4f} (trial {outcome.best_trial}); best config "
        f"{outcome.best_config_url}, trials {outcome.trials_url}, plot {outcome.plot_url}"
    )
