"""Reports: summary.md numbers equal results.parquet's, the PNG plots are valid images of sensible size."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from affect_core.config import RunConfig
from affect_core.data.dataset import ingest, read_corpus
from affect_core.experiment import read_results, train_run, variant_label
from affect_core.report import score_column, write_report
from affect_core.synth import SynthConfig, write_corpus

TINY = SynthConfig(videos_per_split=2, frames=300, appearance_dim=6, geometric_dim=8, test_labels=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A dataset and a 2-seed lstm-kf run of 1 epoch on the tiny corpus (both dimensions)."""
    root = tmp_path_factory.mktemp("report")
    write_corpus(TINY, root / "corpus", "avec2016")
    dataset = str(root / "dataset")
    ingest(str(root / "corpus"), dataset, layout="avec2016", progress=False)
    config = RunConfig()
    config.model.model = "lstm-kf"
    config.train.max_epochs = 1
    train_run(read_corpus(dataset), str(root / "run"), config, dimension="both", seeds=2, progress=False)
    return dataset, str(root / "run")


def check_png(path: Path, min_size: tuple[int, int] = (300, 200)) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        assert min_size[0] <= width <= 4000 and min_size[1] <= height <= 4000, (path, image.size)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path} looks blank"


def table_cells(summary: str, split: str) -> dict[str, list[str]]:
    """{variant label: cells} of the '## <split> split' table of a summary."""
    section = summary.split(f"## {split} split", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


def test_report_writes_plots_and_summary_matching_results(trained_run: tuple[str, str]) -> None:
    dataset, run = trained_run
    result = write_report(run, dataset_url=dataset, videos=2)
    report_dir = Path(run) / "report"
    assert set(result.plots) == {"ablation", "lag", "curves-dev_1", "curves-dev_2", "reliability"}
    for name in result.plots:
        check_png(report_dir / f"{name}.png")
    summary = (report_dir / "summary.md").read_text()
    assert summary == result.summary
    for name in result.plots:
        assert f"]({name}.png)" in summary

    table = read_results(run).to_pandas()
    label = variant_label("lstm-kf", "adaptive", False)
    for split in ("train", "dev", "test"):
        cells = table_cells(summary, split)[label]
        expected = []
        for dim in ("arousal", "valence"):
            sel = table[(table.split == split) & (table.dimension == dim)]
            assert len(sel) == 2  # one row per seed
            for metric in ("ccc", "rmse", "pcc"):
                values = sel[metric].to_numpy()
                expected.append(f"{values.mean():.3f} ({values.std(ddof=0):.3f})")
        assert cells == expected, split
    lag_rows = summary.split("## Learned lag", 1)[1]
    for name in ("arousal", "valence"):
        mus = table[(table.name == name) & (table.split == "dev")]["mu_frames"].to_numpy()
        assert re.search(rf"\| {re.escape(label)} \| {name} \| {mus.mean():.3f} \({mus.std():.3f}\)", lag_rows)


def test_report_uses_predictions_and_tuning_run(trained_run: tuple[str, str], tmp_path: Path) -> None:
    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import iter_videos
    from affect_core.scoring import score_videos

    dataset, run = trained_run
    bundle = load_bundle(f"{run}/model")
    preds = str(tmp_path / "preds")
    score_videos(bundle, iter_videos(dataset), preds, feature_names=bundle.feature_names, progress=False)
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    trials = pa.table(
        {
            "trial_id": ["a", "b", "c"],
            "best_dev_ccc": [0.1, 0.3, 0.2],
            "train.lr": [1e-4, 1e-3, 1e-2],
            "model.lstm_size": [8, 16, 32],
            "status": ["stopped", "finished", "finished"],
        }
    )
    pq.write_table(trials, tuning / "trials.parquet")
    assert score_column(trials) == "best_dev_ccc"
    out = tmp_path / "report"
    result = write_report(
        run,
        dataset_url=dataset,
        predictions_url=preds,
        tuning_url=str(tuning),
        out_url=str(out),
        video_ids=["dev_2"],
    )
    assert set(result.plots) == {"ablation", "lag", "curves-dev_2", "tuning", "reliability"}
    check_png(out / "tuning.png")
    check_png(out / "curves-dev_2.png")
    summary = (out / "summary.md").read_text()
    best_row = [line for line in summary.split("## Tuning", 1)[1].splitlines() if line.startswith("| 0.3")]
    assert best_row and "0.001" in best_row[0] and "16" in best_row[0]


def test_report_cli(trained_run: tuple[str, str], tmp_path: Path) -> None:
    from affect_cli.main import app

    dataset, run = trained_run
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(app, ["report", run, "--dataset", dataset, "--out", str(out), "--videos", "1"])
    assert result.exit_code == 0, result.output
    assert "summary.md" in result.output and (out / "curves-dev_1.png").exists()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no results here" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


@pytest.mark.parametrize("source", ["model", "predictions"])
def test_a_video_id_that_is_no_plain_name_never_names_a_plot(
    trained_run: tuple[str, str], tmp_path: Path, source: str
) -> None:
    """A table written by the library's own writers may hold an id such as '../../x'; the report refuses it before it
    writes anything, instead of drawing curves-../../x.png two folders up."""
    import dataclasses

    from affect_core.artifact import load_bundle
    from affect_core.data.dataset import iter_videos, write_dataset
    from affect_core.errors import AffectError
    from affect_core.scoring import score_videos

    dataset, run = trained_run
    corpus = read_corpus(dataset)
    escaping = "../../../escaped"  # curves-../../../escaped.png lies beside the report folder
    first_dev = next(i for i, v in enumerate(corpus.videos) if v.split == "dev")
    corpus.videos[first_dev] = dataclasses.replace(corpus.videos[first_dev], video_id=escaping)
    bad = str(tmp_path / "data" / "bad")
    write_dataset(corpus, bad, progress=False)
    predictions = None
    if source == "predictions":
        bundle = load_bundle(f"{run}/model")
        predictions = str(tmp_path / "data" / "preds")
        score_videos(bundle, iter_videos(bad), predictions, feature_names=bundle.feature_names, progress=False)
    out = tmp_path / "data" / "report" / "plots"
    with pytest.raises(AffectError, match=re.escape(repr(escaping))):
        write_report(run, dataset_url=bad, predictions_url=predictions, out_url=str(out), videos=1)
    assert not list(tmp_path.rglob("*.png")) and not (out / "summary.md").exists()


def dev_coverage(bundle, dataset: str) -> dict[str, tuple[np.ndarray, int]]:
    """The share of dev labels inside each reliability level's interval, computed here from the bundle's predictions."""
    from affect_core.calibration import RELIABILITY_LEVELS, interval_z
    from affect_core.data.dataset import iter_videos

    counts: dict[str, list] = {}
    for video in iter_videos(dataset, splits=["dev"]):
        for dim, (level, var) in bundle.predict(video.features).items():
            error = np.abs(video.labels(dim) - level)
            inside = [np.count_nonzero(error <= interval_z(q) * np.sqrt(var)) for q in RELIABILITY_LEVELS]
            total = counts.setdefault(dim, [np.zeros(len(RELIABILITY_LEVELS)), 0])
            total[0] += inside
            total[1] += len(level)
    return {d: (c / n, n) for d, (c, n) in counts.items()}


def test_the_report_shows_how_well_the_variance_is_calibrated(trained_run: tuple[str, str]) -> None:
    from affect_core.artifact import load_bundle

    dataset, run = trained_run
    result = write_report(run, dataset_url=dataset, out_url=f"{run}/report-reliability", videos=1)
    check_png(Path(run) / "report-reliability" / "reliability.png")
    section = result.summary.split("## Calibration of the predicted variance", 1)[1].split("\n## ", 1)[0]
    bundle = load_bundle(f"{run}/model")
    assert bundle.calibrated and "holds no calibration" not in section
    for dim, (observed, frames) in dev_coverage(bundle, dataset).items():
        cells = " | ".join(f"{100 * v:.1f}%" for v in observed)
        assert f"| {dim} | {frames} | {cells} |" in section, (dim, cells, section)


def test_the_band_is_the_calibrated_interval_and_widens_without_a_face(
    trained_run: tuple[str, str], tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    from affect_core.artifact import load_bundle, save_bundle
    from affect_core.calibration import Calibration
    from affect_core.data import delta
    from affect_core.data.dataset import iter_videos
    from affect_core.report import curve_data, curves_figure
    from affect_core.storage import resolve

    dataset, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    bundle = load_bundle(f"{run}/model")
    calibration = Calibration(2.0, 0.01)
    models = [dataclasses.replace(m, calibration={d: calibration for d in m.dimensions}) for m in bundle.models]
    save_bundle(dataclasses.replace(bundle, models=models), str(copy / "model"))
    curves = curve_data(
        resolve(str(copy)), delta.resolve_versioned(dataset), predictions=None, video_ids=["dev_1"], videos=1
    )
    curve = curves[0]
    assert curve.face is not None and 0 < np.count_nonzero(~curve.face) < len(curve.face)
    uncalibrated = dataclasses.replace(bundle, models=[dataclasses.replace(m, calibration=None) for m in bundle.models])
    video = next(iter_videos(dataset, video_ids=["dev_1"]))
    for dim, (_, state_variance) in uncalibrated.predict(video.features).items():
        assert curve.variance[dim] == pytest.approx(2.0 * state_variance + 0.01, rel=1e-5)
        # the filter runs without observations where the face is gone: the band is wider there
        assert curve.variance[dim][~curve.face].mean() > 1.5 * np.median(curve.variance[dim][curve.face])
    figure = curves_figure(curve)
    labels = {t.get_text() for ax in figure.axes for t in ax.get_legend().get_texts()}
    assert {"90% interval", "no face"} <= labels


def test_a_report_of_an_uncalibrated_model_says_so(trained_run: tuple[str, str], tmp_path: Path) -> None:
    import dataclasses
    import shutil

    from affect_core.artifact import load_bundle, save_bundle

    dataset, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report*"))
    bundle = load_bundle(f"{run}/model")
    old = dataclasses.replace(bundle, models=[dataclasses.replace(m, calibration=None) for m in bundle.models])
    save_bundle(old, str(copy / "model"))
    result = write_report(str(copy), dataset_url=dataset, videos=0)
    section = result.summary.split("## Calibration of the predicted variance", 1)[1]
    assert "holds no calibration" in section
    for dim, (observed, frames) in dev_coverage(old, dataset).items():
        assert f"| {dim} | {frames} | " + " | ".join(f"{100 * v:.1f}%" for v in observed) + " |" in section
