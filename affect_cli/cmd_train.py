"""``affect train``, ``affect score``, ``affect evaluate`` and ``affect demo`` (single process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def load_run_config(
    config: str | None,
    *,
    model: str | None = None,
    align: str | None = None,
    epochs: int | None = None,
    window_frames: int | None = None,
):
    """The run configuration: the file's (YAML/JSON, as written by ``affect tune``) with the flags given on top."""
    from affect_core.config import RunConfig
    from affect_core.storage import read_bytes, resolve

    if config:
        loc = resolve(config)
        try:
            text = read_bytes(loc.fs, loc.path).decode("utf-8")
        except FileNotFoundError:
            from affect_core.errors import AffectError

            raise AffectError(f"{loc.display()}: config file not found") from None
        except UnicodeDecodeError:
            from affect_core.errors import AffectError

            raise AffectError(f"{loc.display()}: config file is not UTF-8 text") from None
        run_config = RunConfig.from_text(text, where=loc.display())
    else:
        run_config = RunConfig()
    if model is not None:
        run_config.model.model = model
    if align is not None:
        run_config.model.align = align
    if epochs is not None:
        run_config.train.max_epochs = epochs
    if window_frames is not None:
        run_config.train.window_frames = window_frames or None
    run_config.model.__post_init__()
    return run_config


def train(
    dataset_url: Annotated[str, typer.Argument(help="Dataset written by `affect ingest` (path or fsspec URL).")],
    out: Annotated[str, typer.Option("--out", help="Run URL: results.parquet, summary.md, model/ go here.")],
    dimension: Annotated[str, typer.Option(help="arousal | valence | both (two models) | joint (one model).")] = "both",
    model: Annotated[
        str | None, typer.Option(help="baseline | lstm-kf | lstm-ekf (default: config or lstm-ekf).")
    ] = None,
    align: Annotated[str | None, typer.Option(help="none | manual | adaptive (default: config or adaptive).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1) per model.")] = 1,
    epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs (early stopping on dev CCC).")] = None,
    feature_set: Annotated[str | None, typer.Option(help="Feature set name(s), comma-joined for fusion.")] = None,
    config: Annotated[
        str | None, typer.Option(help="YAML/JSON run config (e.g. the best config of `affect tune`).")
    ] = None,
    window_frames: Annotated[
        int | None, typer.Option(help="Truncated BPTT windows of this many frames (0 = whole sequences).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its checkpoints.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train models on a dataset over seeds and write results, a paper-style summary and the model bundle."""
    from affect_core.data.dataset import read_corpus
    from affect_core.experiment import train_run

    run_config = load_run_config(config, model=model, align=align, epochs=epochs, window_frames=window_frames)
    corpus = read_corpus(dataset_url, splits=None, feature_set=feature_set)
    outputs = train_run(corpus, out, run_config, dimension=dimension, seeds=seeds, resume=resume, progress=progress)
    typer.echo(
        f"trained {dimension} {run_config.model.model}/{run_config.model.align} x {seeds} seed(s): "
        f"results {outputs['results']}, summary {outputs['summary']}, model {outputs['model']}"
    )


def score(
    data_url: Annotated[str, typer.Argument(help="Dataset or bare Parquet features URL to score.")],
    model_url: Annotated[str, typer.Option("--model", help="Model bundle URL (RUN_URL/model).")],
    out: Annotated[str, typer.Option("--out", help="Predictions URL (one Parquet file per video).")],
    split: Annotated[list[str] | None, typer.Option(help="Only these splits (repeatable); default all.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write per-frame arousal and valence (with the filter's variance) for every video, labelled or not."""
    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import dataset_info, iter_videos
    from affect_core.scoring import score_videos

    bundle = load_bundle(model_url)
    info = dataset_info(data_url)
    feature_set = bundle.feature_set if bundle.feature_set in info.feature_sets else None
    names = _selected_names(info, feature_set)
    total = sum(len(v) for s, v in info.videos.items() if not split or s in split)
    videos = iter_videos(data_url, splits=split or None, feature_set=feature_set)
    result = score_videos(bundle, videos, out, feature_names=names, progress=progress, total=total)
    typer.echo(
        f"scored {result.videos} video(s), {result.frames} frame(s) in {result.seconds:.1f} s "
        f"({result.frames_per_second:.0f} frames/s, {result.skipped} already done) -> {result.url}"
    )


def _selected_names(info, feature_set: str | None) -> list[str]:
    if feature_set is None or not info.feature_names:
        return list(info.feature_names)
    lo, hi = info.feature_sets[feature_set]
    return list(info.feature_names[lo:hi])


def evaluate(
    pred_url: Annotated[str, typer.Argument(help="Predictions URL written by `affect score`.")],
    dataset_url: Annotated[str, typer.Argument(help="Dataset with the gold-standard labels.")],
    out: Annotated[
        str | None, typer.Option(help="Where to write the metrics JSON (default PRED_URL/_evaluation.json).")
    ] = None,
) -> None:
    """CCC, RMSE and Pearson CC per split and dimension, per sequence then averaged (AVEC protocol)."""
    import json

    from affect_core.data.dataset import iter_videos
    from affect_core.scoring import evaluate_predictions, evaluation_markdown, read_predictions
    from affect_core.storage import resolve, write_bytes_atomic

    predictions = read_predictions(pred_url)
    result = evaluate_predictions(predictions, iter_videos(dataset_url, video_ids=sorted(predictions)))
    typer.echo(evaluation_markdown(result), nl=False)
    target = resolve(out) if out else resolve(pred_url).join("_evaluation.json")
    write_bytes_atomic(target.fs, target.path, json.dumps(result, indent=2).encode())


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path("demo-output"),
    videos_per_split: Annotated[int, typer.Option(min=1)] = 3,
    frames: Annotated[int, typer.Option(min=200)] = 1500,
    epochs: Annotated[int, typer.Option(min=1)] = 40,
) -> None:
    """Generate a corpus, ingest it, train LSTM-EKF-AA for arousal and valence, score and evaluate it."""
    from affect_cli.cmd_ingest import ingest as ingest_command
    from affect_cli.cmd_synth import synth as synth_command

    out.mkdir(parents=True, exist_ok=True)
    corpus_dir, dataset, run, preds = (str(out / n) for n in ("corpus", "dataset", "run", "predictions"))
    synth_command(
        corpus_dir,
        layout="avec2016",
        videos_per_split=videos_per_split,
        frames=frames,
        appearance_dim=84,
        geometric_dim=316,
        seed=0,
        test_labels=True,
    )
    ingest_command(corpus_dir, dataset, layout="avec2016")
    train(
        dataset,
        out=run,
        dimension="both",
        model="lstm-ekf",
        align="adaptive",
        seeds=1,
        epochs=epochs,
        window_frames=500,
        feature_set="appearance",
    )
    score(dataset, model_url=str(out / "run" / "model"), out=preds)
    evaluate(preds, dataset)
    typer.echo((out / "run" / "summary.md").read_text())
