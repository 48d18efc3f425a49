"""The end-to-end demo: generate a RECOLA-shaped corpus, then run the pipeline flow on it with embedded defaults.

Defaults are sized for a 2-core laptop (a few minutes); :meth:`DemoSettings.full_scale` is the paper-sized run.
Everything goes under one root: a local directory (default ``./demo-output``) or an ``s3://`` prefix (the CLI's
``--s3`` starts a local SeaweedFS and passes its endpoint). The generated corpus itself always stays local.
Re-running with the same settings resumes (nothing is redone); other settings start the run afresh.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affect_core.storage import exists, join, read_bytes, remove_tree, resolve, write_bytes_atomic

SETTINGS_FILE = "demo-settings.json"


@dataclass
class DemoSettings:
    """Sizes of the demo. The corpus matches RECOLA's shape (appearance + geometric features, 25 fps, a 2.4 s
    annotation lag); training uses the appearance set, as the paper's video models do."""

    out: Path = Path("demo-output")
    videos_per_split: int = 3
    frames: int = 1500
    seeds: int = 2
    epochs: int = 20
    trials: int = 2
    tune_epochs: int = 8
    window_frames: int = 500
    model: str = "lstm-kf"
    align: str = "adaptive"
    feature_set: str = "appearance"
    report_videos: int = 2
    progress: bool = True
    video: bool = False  # start from generated video clips (the video layout) instead of feature files

    def full_scale(self) -> DemoSettings:
        """The RECOLA-sized run: 9 videos per split of 7501 frames, 10 seeds, 100 epochs, 20 trials."""
        return dataclasses.replace(
            self, videos_per_split=9, frames=7501, seeds=10, epochs=100, trials=20, tune_epochs=30
        )

    def key(self) -> dict[str, Any]:
        """What decides the demo's outputs (a change starts the run afresh)."""
        values = dataclasses.asdict(self)
        values.pop("out")
        values.pop("progress")
        return values


def run_demo(
    settings: DemoSettings,
    *,
    root_url: str | None = None,
    s3_endpoint: str | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Generate the corpus under ``settings.out/corpus`` and run the pipeline flow with the dataset and run under
    ``root_url`` (default ``settings.out``). Returns the pipeline's result (report, predictions, ...)."""
    from affect_core.synth import SynthConfig, write_corpus
    from affect_core.synth.video import VideoSynthConfig, write_video_corpus
    from flows.jobs import IngestJob, PipelineJob, TrainJob, TuneJob, storage_options_for
    from flows.workflows import pipeline_flow

    out = settings.out.absolute()
    root = root_url or str(out)
    corpus_dir = out / "corpus"
    dataset_url, run_url = join(root, "dataset"), join(root, "run")
    options = storage_options_for(root, s3_endpoint)
    _start_afresh_if_changed(settings, run_url, options, echo)
    if settings.video:  # clips of a real face moving with the latent affect: the pipeline starts from videos
        clips = VideoSynthConfig(settings.videos_per_split, settings.frames, test_labels=True, seed=0)
        echo(
            f"generating {3 * settings.videos_per_split} video clips of {settings.frames} frames "
            f"(labels lag by {clips.lag_s:g} s) in {corpus_dir}"
        )
        write_video_corpus(clips, corpus_dir, overwrite=True, progress=settings.progress)
    else:
        synth = SynthConfig(
            videos_per_split=settings.videos_per_split, frames=settings.frames, test_labels=True, seed=0
        )
        echo(
            f"generating {3 * settings.videos_per_split} videos of {settings.frames} frames "
            f"(labels lag by {synth.lag_s:g} s) in {corpus_dir}"
        )
        write_corpus(synth, corpus_dir, "avec2016", overwrite=True, progress=settings.progress)
    echo(f"running the pipeline flow: dataset {dataset_url}, run {run_url}")
    job = PipelineJob(
        source=str(corpus_dir),
        dataset_url=dataset_url,
        out=run_url,
        feature_set=None if settings.video else settings.feature_set,
        s3_endpoint=s3_endpoint,
        progress=settings.progress,
        report_videos=settings.report_videos,
        ingest=IngestJob(layout="video" if settings.video else "avec2016"),
        tune=TuneJob(num_samples=settings.trials, max_concurrent=1, epochs=settings.tune_epochs),
        train=TrainJob(
            dimension="both",
            model=settings.model,
            align=settings.align,
            seeds=settings.seeds,
            epochs=settings.epochs,
            window_frames=settings.window_frames,
        ),
    )
    return pipeline_flow(job)


def _start_afresh_if_changed(
    settings: DemoSettings, run_url: str, options: dict[str, Any] | None, echo: Callable[[str], Any]
) -> None:
    """Remove the previous demo run when it was made with other settings (its seeds would be reused)."""
    run = resolve(run_url, options)
    marker = run.join(SETTINGS_FILE)
    wanted = json.dumps(settings.key(), sort_keys=True)
    if exists(run.fs, run.path):
        previous = read_bytes(run.fs, marker.path).decode() if exists(run.fs, marker.path) else ""
        if previous != wanted:
            echo(f"{run.display()}: made with other settings; starting the run afresh")
            remove_tree(run.fs, run.path)
    write_bytes_atomic(run.fs, marker.path, wanted.encode())
