"""`affect demo --video`: the pipeline flow starts from generated video clips (faces found, LGBP-TOP features, the
PCA transform stored with the dataset), trains, scores every frame and reports, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from affect_core.data.dataset import dataset_info
from affect_core.scoring import read_predictions


@pytest.mark.slow
def test_the_demo_runs_from_videos(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--video", "--out", str(out), "--videos-per-split", "1", "--frames", "200"]
    args += ["--trials", "0", "--epochs", "2", "--seeds", "1", "--window-frames", "0", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_API_URL"))}
    done = subprocess.run(
        [sys.executable, "-m", "affect_cli.main", *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "video clips" in done.stdout
    info = dataset_info(str(out / "dataset"))
    assert info.layout == "video" and sum(len(ids) for ids in info.videos.values()) == 3
    predictions = read_predictions(str(out / "run" / "predictions"))
    assert sorted(predictions) == sorted(v for ids in info.videos.values() for v in ids)
    assert all(predictions[v].num_rows == 200 for v in predictions)
    assert (out / "run" / "model" / "video_transform.safetensors").exists()
