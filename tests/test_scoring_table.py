"""The predictions table: scoring with another model (or another dataset version) replaces the rows in one commit or
is refused, never mixed; model ids tell trainings apart; evaluation streams from the table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_scoring_batched import make_bundle

from affect_core import scoring
from affect_core.artifact import load_bundle, save_bundle
from affect_core.data import dataset as ds
from affect_core.data import delta
from affect_core.errors import AffectError
from affect_core.scoring import pipeline as scoring_pipeline
from affect_core.scoring import predictions as scoring_predictions
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, write_corpus


@pytest.fixture
def dataset(tmp_path):
    """A csv-layout corpus of 5 features (the test bundles' width), 3 videos per split."""
    write_corpus(
        SynthConfig(videos_per_split=3, frames=80, appearance_dim=3, geometric_dim=2, seed=5), tmp_path / "src", "csv"
    )
    url = str(tmp_path / "ds")
    ds.ingest(str(tmp_path / "src"), url, layout="csv", progress=False)
    return url


def bundle_for(dataset_url: str, seed: int, tmp_path, name: str) -> str:
    """A model bundle saved under tmp_path/name whose weights depend on ``seed`` (a stand-in for one training)."""
    bundle = make_bundle()
    bundle.feature_names = ds.dataset_info(dataset_url).feature_names
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in bundle.models[0].model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    url = str(tmp_path / name)
    save_bundle(bundle, url)
    return url


def rows(url: str, version: int | None = None):
    snap = scoring.open_predictions(resolve(url), version=version)
    return [
        delta.read_row_groups(snap.location, f.path, range(len({e.row_group for e in f.entries()}))) for f in snap.files
    ]


def test_another_model_replaces_the_predictions_in_one_commit(dataset, tmp_path):
    model_a, model_b = bundle_for(dataset, 1, tmp_path, "a"), bundle_for(dataset, 2, tmp_path, "b")
    id_a, id_b = load_bundle(model_a).model_id, load_bundle(model_b).model_id
    assert id_a != id_b and id_a.split("@")[0] == id_b.split("@")[0]  # same variant, two trainings
    out = str(tmp_path / "pred")
    frames = ds.dataset_info(dataset).rows
    first = scoring.score_dataset(dataset, model_a, out, progress=False)
    assert (first.frames, first.skipped) == (frames, 0)
    last_of_a = scoring.open_predictions(resolve(out)).version  # a job commits as each split's file closes
    second = scoring.score_dataset(dataset, model_b, out, progress=False)
    assert (second.frames, second.skipped) == (frames, 0), "another model's predictions counted as done"
    tables = rows(out)
    assert sum(t.num_rows for t in tables) == frames
    assert {m for t in tables for m in t.column("model_id").to_pylist()} == {id_b}
    assert {v for t in tables for v in t.column("dataset_version").to_pylist()} == {"0"}
    store = scoring.read_predictions(out)
    assert store.target == scoring.PredictionTarget(id_b, ds.dataset_info(dataset).url, "0")
    old = scoring.read_predictions(f"{out}@{last_of_a}")
    assert old.target.model_id == id_a and len(old) == len(store)
    again = scoring.score_dataset(dataset, model_b, out, progress=False)
    assert again.skipped == len(store) and again.frames == 0


def test_replacing_can_be_refused_and_nothing_changes(dataset, tmp_path):
    model_a, model_b = bundle_for(dataset, 1, tmp_path, "a"), bundle_for(dataset, 2, tmp_path, "b")
    out = str(tmp_path / "pred")
    scoring.score_dataset(dataset, model_a, out, progress=False)
    before = delta.versions(resolve(out))
    with pytest.raises(AffectError, match="holds predictions of model .* not of model"):
        scoring.score_dataset(dataset, model_b, out, progress=False, replace=False)
    assert delta.versions(resolve(out)) == before


def test_a_new_dataset_version_is_scored_again_and_a_pinned_one_is_kept(dataset, tmp_path):
    model = bundle_for(dataset, 1, tmp_path, "a")
    out = str(tmp_path / "pred")
    scoring.score_dataset(dataset, model, out, progress=False)
    (tmp_path / "src" / "labels" / "dev_1.csv").unlink()
    ds.ingest(str(tmp_path / "src"), dataset, layout="csv", progress=False)
    rescored = scoring.score_dataset(dataset, model, out, progress=False)
    assert rescored.skipped == 0 and scoring.read_predictions(out).target.dataset_version == "1"
    pinned = scoring.score_dataset(f"{dataset}@1", model, out, progress=False)
    assert pinned.skipped == pinned.videos


def test_a_crashed_job_resumes_only_with_the_same_model(dataset, tmp_path, monkeypatch):
    model_a, model_b = bundle_for(dataset, 1, tmp_path, "a"), bundle_for(dataset, 2, tmp_path, "b")
    out = str(tmp_path / "pred")
    real = scoring.prediction_rows
    seen = []

    def crash_at_the_fifth(videos, *args):
        seen.extend(v.video_id for v in videos)
        if len(seen) == 5:
            raise OSError("node lost")
        return real(videos, *args)

    monkeypatch.setattr(scoring_pipeline, "BATCH_VIDEOS", 1)  # a batch a video: the crash comes after four are written
    monkeypatch.setattr(scoring_predictions, "prediction_rows", crash_at_the_fifth)
    with pytest.raises(OSError, match="node lost"):
        scoring.score_dataset(dataset, model_a, out, progress=False, target_file_bytes=1)
    monkeypatch.setattr(scoring_predictions, "prediction_rows", real)
    done = scoring.finished_videos(resolve(out))
    assert len(done) == 4
    other = scoring.score_dataset(dataset, model_b, out, progress=False, target_file_bytes=1)
    assert other.skipped == 0
    same = scoring.score_dataset(dataset, model_a, out, progress=False)
    assert same.skipped == 0 and len(scoring.read_predictions(out)) == 9


def test_evaluation_streams_from_the_table(dataset, tmp_path, monkeypatch):
    model = bundle_for(dataset, 1, tmp_path, "a")
    out = str(tmp_path / "pred")
    scoring.score_dataset(dataset, model, out, progress=False)
    in_memory = {k: v for k, v in scoring.read_predictions(out).items()}
    expected = scoring.evaluate_predictions(in_memory, ds.iter_videos(dataset))
    reads = []
    real = delta.TableFile.read

    def counted(self, row_groups, columns=None):
        reads.append((self.path, tuple(row_groups)))
        return real(self, row_groups, columns)

    monkeypatch.setattr(delta.TableFile, "read", counted)
    store = scoring.read_predictions(out)
    got = scoring.evaluate_predictions(store, ds.iter_videos(dataset, video_ids=sorted(store)))
    assert got == expected
    groups = {(f.path, e.row_group) for f in store.snapshot.files for e in f.entries()}
    prediction_reads = [r for r in reads if r[0] in {p for p, _ in groups}]
    assert prediction_reads and len(prediction_reads) == len(set(prediction_reads)), "a row group read twice"
    for split in got.values():
        for metrics in split.values():
            assert np.isfinite(metrics["ccc"])


def test_info_and_export_of_a_predictions_table(dataset, tmp_path):
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from affect_cli.main import app

    model = bundle_for(dataset, 1, tmp_path, "a")
    out = str(tmp_path / "pred")
    scoring.score_dataset(dataset, model, out, progress=False)
    runner = CliRunner()
    result = runner.invoke(app, ["info", out, "--json"])
    assert result.exit_code == 0, result.output
    # Strict JSON (what jq and other languages' parsers read): a predictions table keeps no frame rate, null, not NaN.
    info = json.loads(result.output, parse_constant=lambda name: pytest.fail(f"{name} in affect info --json"))
    assert info["kind"] == "predictions" and info["metadata"]["affect.model_id"] == load_bundle(model).model_id
    assert info["fps"] is None and info["feature_sets"] == {}
    assert [(v["video_id"], v["frames"]) for v in info["videos"]] == [
        (v.video_id, v.num_frames) for v in ds.iter_videos(dataset)
    ]
    assert "model_id: " in runner.invoke(app, ["info", out]).output
    # The predictions' face column is counted in the index: the same frames without a face as the dataset's.
    assert [v["frames_without_face"] for v in info["videos"]] == [
        int(np.isnan(v.features).all(axis=1).sum()) for v in ds.iter_videos(dataset)
    ]
    text = runner.invoke(app, ["info", out]).output
    assert "without a face" in text and "test: 3 video(s)" in text
    assert runner.invoke(app, ["export", f"{out}@0", str(tmp_path / "p.parquet")]).exit_code == 0
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.num_rows == ds.dataset_info(dataset).rows
    assert set(table.column("model_id").to_pylist()) == {load_bundle(model).model_id}


def test_evaluation_reads_the_labels_of_the_version_that_was_scored(dataset, tmp_path):
    from flows.jobs import EvaluateJob, run_evaluate

    model = bundle_for(dataset, 1, tmp_path, "a")
    out = str(tmp_path / "pred")
    scoring.score_dataset(dataset, model, out, progress=False)
    labels = tmp_path / "src" / "labels" / "dev_1.csv"
    lines = labels.read_text().splitlines()
    changed = [lines[0]] + [f"{t},{-float(a):.6f},{v}" for t, a, v in (line.split(",") for line in lines[1:])]
    labels.write_text("\n".join(changed) + "\n")
    ds.ingest(str(tmp_path / "src"), dataset, layout="csv", progress=False)  # version 1: other gold labels
    store = scoring.read_predictions(out)
    at_scored = scoring.evaluate_predictions(store, ds.iter_videos(f"{dataset}@0", video_ids=store.video_ids()))
    at_latest = scoring.evaluate_predictions(store, ds.iter_videos(f"{dataset}@1", video_ids=store.video_ids()))
    assert at_scored["dev"]["arousal"] != at_latest["dev"]["arousal"]

    assert run_evaluate(EvaluateJob(out, dataset, out=str(tmp_path / "a.json"))) == at_scored
    assert run_evaluate(EvaluateJob(out, f"{dataset}@1", out=str(tmp_path / "b.json"))) == at_latest
    copy = str(tmp_path / "copy")
    ds.ingest(str(tmp_path / "src"), copy, layout="csv", progress=False)  # another table: its latest version
    assert run_evaluate(EvaluateJob(out, copy, out=str(tmp_path / "c.json"))) == at_latest
