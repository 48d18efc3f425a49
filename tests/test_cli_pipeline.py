"""End to end through the CLI: synth -> ingest -> train -> score -> evaluate, on a local path and on S3."""

import json
import math
import os

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.scoring.predictions import PREDICTION_SCHEMA

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def run_pipeline(root: str, tmp_path, env=None, layout="csv"):
    corpus = str(tmp_path / "corpus")
    invoke(
        "synth",
        corpus,
        "--layout",
        layout,
        "--videos-per-split",
        "2",
        "--frames",
        "300",
        "--appearance-dim",
        "6",
        "--geometric-dim",
        "8",
        "--test-labels",
        env=env,
    )
    dataset, run, preds = f"{root}/dataset", f"{root}/run", f"{root}/preds"
    invoke("ingest", corpus, dataset, "--layout", layout, "--no-progress", env=env)
    invoke(
        "train",
        dataset,
        "--out",
        run,
        "--dimension",
        "both",
        "--model",
        "lstm-kf",
        "--align",
        "adaptive",
        "--seeds",
        "2",
        "--epochs",
        "2",
        "--window-frames",
        "100",
        "--no-progress",
        env=env,
    )
    invoke("score", dataset, "--model", f"{run}/model", "--out", preds, "--no-progress", env=env)
    evaluated = invoke("evaluate", preds, dataset, env=env)
    return dataset, run, preds, evaluated.output


def committed_rows(url: str, storage_options: dict | None = None):
    """Every committed row of a predictions table, as another Delta Lake reader (deltalake's own) sees them."""
    import pyarrow as pa
    from deltalake import DeltaTable

    from affect_core.data import delta
    from affect_core.storage import resolve

    loc = resolve(url, storage_options)
    table = DeltaTable(delta.table_uri(loc), storage_options=delta.delta_storage_options(loc))
    return pa.table(table.to_pyarrow_table())


def check_outputs(table_rows: list[dict], summary: str, pred_table) -> None:
    assert {r["split"] for r in table_rows} == {"train", "dev", "test"}
    assert {r["dimension"] for r in table_rows} == {"arousal", "valence"}
    assert {r["seed"] for r in table_rows} == {0, 1}
    assert len(table_rows) == 2 * 2 * 3  # models x seeds x splits
    assert all(math.isfinite(r["ccc"]) and r["epochs"] == 2 for r in table_rows)
    assert "LSTM-KF-AA" in summary and "Learned lag" in summary
    assert pred_table.num_rows == 6 * 300
    assert pred_table.column_names == PREDICTION_SCHEMA.names
    assert {"face", "face_id", "arousal_var", "valence_var", "model_id", "dataset_version"} <= set(
        PREDICTION_SCHEMA.names
    )
    frames = pred_table.select(["video_id", "frame"]).to_pylist()
    assert len({(r["video_id"], r["frame"]) for r in frames}) == len(frames)


def test_local_pipeline(tmp_path):
    root = str(tmp_path / "out")
    dataset, run, preds, evaluation = run_pipeline(root, tmp_path)
    rows = pq.read_table(f"{run}/results.parquet").to_pylist()
    table = committed_rows(preds)
    check_outputs(rows, open(f"{run}/summary.md").read(), table)
    assert "| dev | arousal | 2 |" in evaluation
    saved = json.load(open(f"{preds}/_evaluation.json"))
    assert set(saved) == {"train", "dev", "test"}
    # scoring equals the in-memory model's output
    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import read_corpus

    bundle = load_bundle(f"{run}/model")
    video = read_corpus(dataset, splits=["test"]).videos[0]
    expected = bundle.predict(video.features)
    got = table.filter(ds.field("video_id") == video.video_id).sort_by("frame")
    assert np.allclose(got.column("arousal").to_numpy(), expected["arousal"][0], atol=1e-6)
    assert np.allclose(got.column("valence_var").to_numpy(), expected["valence"][1], atol=1e-6)
    # re-running the scorer adds no rows
    invoke("score", dataset, "--model", f"{run}/model", "--out", preds, "--no-progress")
    assert committed_rows(preds).num_rows == 6 * 300


def test_cli_errors_are_one_line_and_non_zero(tmp_path):
    result = runner.invoke(
        app,
        ["score", str(tmp_path / "nothing"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: ")
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  model: lstm-xkf\n")
    result = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(config)])
    assert result.exit_code == 1 and "model must be one of" in result.output


@pytest.mark.services
def test_s3_pipeline(tmp_path, s3_server, s3_url):
    env = {**os.environ, **s3_server.env()}
    dataset, run, preds, evaluation = run_pipeline(s3_url, tmp_path, env=env, layout="avec2016")
    assert "| dev | valence | 2 |" in evaluation
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    rows = pq.read_table(f"{run}/results.parquet", filesystem=fs).to_pylist()
    summary = fs.cat(f"{run}/summary.md").decode()
    table = committed_rows(preds, s3_server.storage_options())
    check_outputs(rows, summary, table)
