"""Scoring: per-frame valence and arousal with the filter's variance for every video, and evaluation against labels.

One module per job, their public names re-exported here:

- :mod:`~affect_core.scoring.predictions`: the predictions table (schema, who its rows are from, the writer a job
  commits through, the lazy reader);
- :mod:`~affect_core.scoring.pipeline`: scoring a dataset or a stream of videos into that table, in model batches;
- :mod:`~affect_core.scoring.background`: the pipeline's read-ahead and write-behind threads;
- :mod:`~affect_core.scoring.evaluation`: metrics of predictions against a dataset's labels.

A setting such as BATCH_VIDEOS is read by the module that holds it: change (or monkeypatch) it there, not here.
"""

from affect_core.scoring.background import BackgroundWriter, ReadAhead
from affect_core.scoring.evaluation import evaluate_predictions, evaluation_markdown
from affect_core.scoring.pipeline import (
    BATCH_FRAMES,
    BATCH_VIDEOS,
    CHUNK_FRAMES,
    SWITCH_INTERVAL_S,
    ScoreResult,
    bundle_features,
    check_compatible,
    check_video_ids,
    model_threads,
    predict_tracks,
    score_dataset,
    score_stream,
    score_videos,
    scoring_plan,
    video_batches,
)
from affect_core.scoring.predictions import (
    COMMIT_SECONDS,
    PREDICTION_SCHEMA,
    PREDICTIONS_KIND,
    PredictionStore,
    PredictionTarget,
    PredictionWriter,
    Tracks,
    finished_videos,
    open_predictions,
    plan_scoring,
    prediction_rows,
    read_predictions,
    scored_version,
    write_predicted,
)

__all__ = [
    "BATCH_FRAMES",
    "BATCH_VIDEOS",
    "CHUNK_FRAMES",
    "COMMIT_SECONDS",
    "PREDICTIONS_KIND",
    "PREDICTION_SCHEMA",
    "SWITCH_INTERVAL_S",
    "BackgroundWriter",
    "PredictionStore",
    "PredictionTarget",
    "PredictionWriter",
    "ReadAhead",
    "ScoreResult",
    "Tracks",
    "bundle_features",
    "check_compatible",
    "check_video_ids",
    "evaluate_predictions",
    "evaluation_markdown",
    "finished_videos",
    "model_threads",
    "open_predictions",
    "plan_scoring",
    "predict_tracks",
    "prediction_rows",
    "read_predictions",
    "score_dataset",
    "score_stream",
    "score_videos",
    "scored_version",
    "scoring_plan",
    "video_batches",
    "write_predicted",
]
