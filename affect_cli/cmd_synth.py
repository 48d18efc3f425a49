"""`affect synth`: write a generated RECOLA-shaped corpus in one of the input layouts.

numpy and affect_core are imported inside the command, so importing this module (and `affect --help`)
stays instant.
"""

from __future__ import annotations

from typing import Annotated

import typer


def synth(
    out: Annotated[str, typer.Argument(help="Output directory; must not exist or be empty (see --overwrite).")],
    layout: Annotated[
        str,
        typer.Option(
            help="Input layout to write: avec2016 (the release's), csv, parquet, openface, muse or video (clips of a "
            "real face)."
        ),
    ] = "avec2016",
    flat: Annotated[
        bool, typer.Option(help="avec2016: the flat variant (features_<set>/<id>.arff) instead of the release's.")
    ] = False,
    label_fps: Annotated[
        float | None,
        typer.Option(help="openface, muse: write the labels at this rate (e.g. 25 against 30 fps features)."),
    ] = None,
    affwild2: Annotated[
        bool, typer.Option(help="openface: labels as Aff-Wild2 VA text files (-5 where unlabelled).")
    ] = False,
    raters: Annotated[
        int, typer.Option(help="Per-rater traces around the gold standard (avec2016: ratings_individual_centred).")
    ] = 0,
    videos_per_split: Annotated[int, typer.Option(help="Videos in each of train, dev and test.")] = 9,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 7501,
    fps: Annotated[float, typer.Option(help="Frame rate (frames per second).")] = 25.0,
    lag_s: Annotated[float, typer.Option(help="Seconds by which the gold-standard labels lag the features.")] = 2.4,
    no_face_share: Annotated[
        float, typer.Option(help="Share of frames without a face (all features missing), in contiguous runs.")
    ] = 0.05,
    appearance_dim: Annotated[int, typer.Option(help="Number of appearance features (0: none).")] = 84,
    geometric_dim: Annotated[int, typer.Option(help="Number of geometric features (0: none).")] = 316,
    feature_noise: Annotated[
        float, typer.Option(help="Feature noise standard deviation, relative to the signal.")
    ] = 2.0,
    label_noise: Annotated[float, typer.Option(help="Annotator noise standard deviation on the labels.")] = 0.03,
    test_labels: Annotated[
        bool,
        typer.Option("--test-labels/--no-test-labels", help="Write gold-standard labels for test videos too."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same corpus.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it is a non-empty directory.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar over videos.")] = False,
) -> None:
    """Generate a corpus with a known latent affect and a planted annotation lag, and write it to OUT."""
    import time

    from affect_core.synth import SynthConfig, WriteOptions, write_corpus

    started = time.perf_counter()
    if layout == "video":  # generated clips of a real face; the feature and noise options do not apply
        from affect_core.synth.video import VideoSynthConfig, write_video_corpus

        clips = VideoSynthConfig(
            videos_per_split,
            frames,
            fps,
            lag_s=lag_s,
            no_face_share=no_face_share,
            label_noise=label_noise,
            test_labels=test_labels,
            seed=seed,
        )
        write_video_corpus(clips, out, overwrite=overwrite, progress=progress)
        typer.echo(
            f"wrote {3 * videos_per_split} clips of {frames} frames at {fps:g} fps (labels lagging by "
            f"{lag_s:g} s) in the video layout to {out} in {time.perf_counter() - started:.1f} s"
        )
        return
    config = SynthConfig(
        videos_per_split=videos_per_split,
        frames=frames,
        fps=fps,
        lag_s=lag_s,
        no_face_share=no_face_share,
        appearance_dim=appearance_dim,
        geometric_dim=geometric_dim,
        feature_noise=feature_noise,
        label_noise=label_noise,
        test_labels=test_labels,
        raters=raters,
        seed=seed,
    )
    options = WriteOptions(flat=flat, label_fps=label_fps, affwild2=affwild2)
    corpus = write_corpus(config, out, layout, overwrite=overwrite, progress=progress, options=options)
    sets = " + ".join(f"{name} {dim}" for name, dim in config.feature_dims.items())
    typer.echo(
        f"wrote {len(corpus.videos)} videos ({videos_per_split} per split, {frames} frames at {fps:g} fps, "
        f"features {sets}, labels lagging by {config.lag_frames} frames = {lag_s:g} s) in the {layout} "
        f"layout to {out} in {time.perf_counter() - started:.1f} s"
    )
