"""The whole video path is learnable: generated clips of a real face moving with a known latent affect -> ingest ->
train; the manual alignment finds the planted annotation lag and the aligned filter beats the baseline on dev."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from affect_core.config import load_run_config
from affect_core.data.dataset import ingest, read_corpus
from affect_core.experiment import train_run
from affect_core.synth.video import VideoSynthConfig, write_video_corpus
from affect_core.video.config import VideoConfig
from affect_core.video.layout import LAYOUT

LAG_FRAMES = 25
# The pipeline's stages and recipe with a smaller face and block grid, so that the test takes a minute or two.
SETTINGS = VideoConfig(face_size=32, blocks=2)


@pytest.mark.slow
def test_video_corpus_is_learnable_and_the_lag_is_recovered(tmp_path) -> None:
    torch.set_num_threads(1)
    root = tmp_path / "clips"
    clips = VideoSynthConfig(
        videos_per_split=3, frames=400, width=320, height=180, lag_s=LAG_FRAMES / 25, no_face_share=0.05, seed=3
    )
    write_video_corpus(clips, root)
    ingest(str(root), str(tmp_path / "dataset"), layout=LAYOUT, video_config=SETTINGS, progress=False)
    corpus = read_corpus(str(tmp_path / "dataset"), splits=None)

    def dev_row(model: str, align: str):
        config = load_run_config(None, model=model, align=align, epochs=60, window_frames=200)
        config.train.lr = 3e-3
        outputs = train_run(corpus, str(tmp_path / align), config, dimension="arousal", seeds=1, progress=False)
        table = pq.read_table(outputs["results"]).to_pandas()
        return table[table["split"] == "dev"].iloc[0]

    aligned, baseline = dev_row("lstm-kf", "manual"), dev_row("baseline", "none")
    # The manual alignment's grid steps by 0.2 s = 5 frames.
    assert abs(aligned["mu_frames"] - LAG_FRAMES) <= 5, aligned["mu_frames"]
    assert aligned["ccc"] > 0.6, aligned["ccc"]
    assert aligned["ccc"] > baseline["ccc"] + 0.05, (aligned["ccc"], baseline["ccc"])
