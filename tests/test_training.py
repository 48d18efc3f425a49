"""The single-process training loop: deterministic, resumable, early-stopping, and it learns the planted lag."""

import math

import numpy as np
import pytest
import torch

from affect_core.config import FeatureConfig, ModelConfig, RunConfig, TrainConfig
from affect_core.errors import AffectError
from affect_core.model import AffectModel
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import load_checkpoint, save_checkpoint, train_model, train_seeds


@pytest.fixture(scope="module")
def tiny_corpus():
    return generate_corpus(SynthConfig(videos_per_split=2, frames=300, appearance_dim=6, geometric_dim=8, seed=3))


def tiny_config(**train) -> RunConfig:
    train = {"max_epochs": 3, "window_frames": 100, "batch_size": 2, "seed": 1, **train}
    return RunConfig(model=ModelConfig(model="lstm-kf", align="adaptive", window=20), train=TrainConfig(**train))


def state_of(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def test_same_seed_gives_identical_models_and_records(tiny_corpus):
    torch.set_num_threads(1)
    a = train_model(tiny_corpus.split("train"), tiny_corpus.split("dev"), tiny_config(), progress=False)
    b = train_model(tiny_corpus.split("train"), tiny_corpus.split("dev"), tiny_config(), progress=False)
    for key, value in state_of(a).items():
        assert torch.equal(value, state_of(b)[key]), key
    assert a.metrics == b.metrics
    assert a.epochs == 3 and len(a.history) == 3 and a.train_seconds > 0
    assert set(a.metrics) == {"train", "dev"} and set(a.metrics["dev"]) == {"arousal"}
    c = train_model(tiny_corpus.split("train"), tiny_corpus.split("dev"), tiny_config(seed=2), progress=False)
    assert any(not torch.equal(v, state_of(c)[k]) for k, v in state_of(a).items())


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tiny_corpus, tmp_path):
    torch.set_num_threads(1)
    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    whole = train_model(train, dev, tiny_config(max_epochs=4, patience=100), progress=False)
    ckpt = str(tmp_path / "ckpt.pt")
    first = train_model(train, dev, tiny_config(max_epochs=2, patience=100), checkpoint_path=ckpt, progress=False)
    assert first.epochs == 2
    resumed = train_model(
        train, dev, tiny_config(max_epochs=4, patience=100), checkpoint_path=ckpt, resume=True, progress=False
    )
    assert resumed.epochs == 4 and [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    for key, value in state_of(whole).items():
        assert torch.allclose(value, state_of(resumed)[key], atol=1e-6), key


def test_a_checkpoint_of_an_earlier_model_layout_is_refused_in_one_line(tiny_corpus, tmp_path):
    """A checkpoint written before the filters' gap step (no gap_rho, gap_mean) cannot continue a run: one line says
    so and what to do, instead of a trace from the state dict."""
    torch.set_num_threads(1)
    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    ckpt = str(tmp_path / "ckpt.pt")
    train_model(train, dev, tiny_config(max_epochs=1, patience=100), checkpoint_path=ckpt, progress=False)
    payload = load_checkpoint(ckpt)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.endswith((".gap_rho", ".gap_mean"))}
    save_checkpoint(ckpt, payload)
    with pytest.raises(AffectError, match=r"earlier model without gap_mean, gap_rho; .* without --resume"):
        train_model(
            train, dev, tiny_config(max_epochs=2, patience=100), checkpoint_path=ckpt, resume=True, progress=False
        )


@pytest.mark.parametrize("seeds", [[1], [0, 1, 2]])
def test_a_checkpoint_with_one_optimizer_entry_per_seed_resumes_as_before(tiny_corpus, tmp_path, seeds):
    """Checkpoints written while each seed had its own filter and alignment modules hold Adam's state per seed and
    parameter (seed-major, after the front-end's, with the one module's shapes); resuming from one equals an
    uninterrupted run."""
    torch.set_num_threads(1)
    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    whole = train_seeds(train, dev, tiny_config(max_epochs=3, patience=100), seeds, progress=False)
    ckpt = str(tmp_path / "ckpt.pt")
    train_seeds(train, dev, tiny_config(max_epochs=2, patience=100), seeds, checkpoint_path=ckpt, progress=False)
    payload = load_checkpoint(ckpt)
    stacked = payload["optimizer"]
    # The earlier layout: group 0 = the front-end's 10 tensors, then per seed the filter's parameters (q, r, F, H and
    # the gap step's); group 1 = per seed the alignment's mu_raw, sigma2_raw. Row s of a stacked moment is seed s's own.
    front, filters = stacked["param_groups"][0]["params"][:10], stacked["param_groups"][0]["params"][10:]
    aligns = stacked["param_groups"][1]["params"]
    one_filter = AffectModel(ModelConfig(model="lstm-kf", input_dim=3)).filters.template
    assert len(filters) == len(list(one_filter.parameters())) >= 4 and len(aligns) == 2

    def row(index: int, s: int) -> dict:
        entry = stacked["state"][index]
        return {"step": entry["step"].clone(), **{k: entry[k][s].clone() for k in ("exp_avg", "exp_avg_sq")}}

    state, groups, index = {}, [[], []], 0
    for i in front:
        state[index], index = stacked["state"][i], index + 1
        groups[0].append(index - 1)
    for g, per_seed in ((0, filters), (1, aligns)):
        for s in range(len(seeds)):
            for i in per_seed:
                state[index], index = row(i, s), index + 1
                groups[g].append(index - 1)
    payload["optimizer"] = {
        "state": state,
        "param_groups": [{**group, "params": ids} for group, ids in zip(stacked["param_groups"], groups, strict=True)],
    }
    save_checkpoint(ckpt, payload)
    resumed = train_seeds(
        train, dev, tiny_config(max_epochs=3, patience=100), seeds, checkpoint_path=ckpt, resume=True, progress=False
    )
    for a, b in zip(whole, resumed, strict=True):
        for key, value in state_of(a).items():
            assert torch.allclose(value, state_of(b)[key], atol=1e-6), key


def test_early_stopping_stops_after_patience(tiny_corpus):
    result = train_model(
        tiny_corpus.split("train"),
        tiny_corpus.split("dev"),
        tiny_config(max_epochs=50, patience=2, lr=0.0, lr_align=0.0),
        progress=False,
    )
    # with nothing learning, the dev CCC never improves after the first epoch
    assert result.epochs == 3 and result.best_epoch == 1


def test_full_length_bptt_and_pca_and_pooling(tiny_corpus):
    config = tiny_config(window_frames=None, max_epochs=2)
    config.features = FeatureConfig(pca_share=0.9, pooling_window=10)
    config.model.model = "lstm-ekf"
    result = train_model(tiny_corpus.split("train"), tiny_corpus.split("dev"), config, progress=False)
    assert result.transform.components is not None
    assert result.config.model.input_dim == result.transform.output_dim
    assert math.isfinite(result.metrics["dev"]["arousal"]["ccc"])


def test_manual_alignment_delay_is_chosen_on_the_train_split(tiny_corpus):
    config = tiny_config(max_epochs=1)
    config.model.align = "manual"
    result = train_model(tiny_corpus.split("train"), tiny_corpus.split("dev"), config, progress=False)
    assert result.config.model.manual_shift is not None and 0 <= result.config.model.manual_shift <= 100
    assert result.mu_frames == result.config.model.manual_shift


def test_no_train_labels_is_a_clear_error(tiny_corpus):
    unlabelled = tiny_corpus.split("test")
    with pytest.raises(AffectError, match="no train video has arousal labels"):
        train_model(unlabelled, [], tiny_config(), progress=False)


@pytest.mark.slow
def test_lstm_kf_aa_learns_the_planted_lag_and_beats_the_baseline():
    """Labels lag the features by L = 60 frames: AA finds mu within 3 frames and the filter beats the baseline."""
    torch.set_num_threads(1)
    lag = 60
    corpus = generate_corpus(
        SynthConfig(
            videos_per_split=4,
            frames=1500,
            appearance_dim=20,
            geometric_dim=30,
            seed=1,
            lag_s=lag / 25.0,
            feature_noise=0.5,
        )
    )
    train, dev = corpus.split("train"), corpus.split("dev")

    def config(model, align):
        return RunConfig(
            model=ModelConfig(model=model, align=align, q_init=0.1, r_init=1e-3),
            train=TrainConfig(max_epochs=60, window_frames=500, batch_size=4, patience=60, lr=3e-3, lr_align=0.05),
        )

    kf = train_model(train, dev, config("lstm-kf", "adaptive"), progress=False)
    baseline = train_model(train, dev, config("baseline", "none"), progress=False)
    assert abs(kf.mu_frames - lag) <= 3, kf.mu_frames
    assert kf.metrics["dev"]["arousal"]["ccc"] > baseline.metrics["dev"]["arousal"]["ccc"] + 0.05


def plant_non_finite_state(monkeypatch, *, row: int, frame: int, when: str, value: float = math.nan) -> None:
    """Patches the model so that its filtered state is ``value`` at ``frame`` of batch row ``row``, in training steps
    (``when="train"``) or in evaluation (``"eval"``, run in inference mode)."""
    original = AffectModel.causal

    def causal(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if (when == "eval") == torch.is_inference_mode_enabled():
            for z in out.states:
                if z is not None and z.shape[0] > row and z.shape[1] > frame:
                    z.data[row, frame, 0] = value
        return out

    monkeypatch.setattr(AffectModel, "causal", causal)


@pytest.mark.parametrize("window", [None, 100])
def test_a_non_finite_state_in_training_is_an_error_naming_the_video_and_frame(tiny_corpus, monkeypatch, window):
    """The alignment keeps a NaN frame to itself, so the loss stays finite: the state is checked, and the error
    names the train video and the frame within it (whole sequences, and the windows of truncated BPTT)."""
    from affect_core.training import draw_windows

    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    plant_non_finite_state(monkeypatch, row=1, frame=37, when="train")
    if window is None:
        video, frame = train[1].video_id, 37  # whole sequences: one batch row per train video, in order
    else:
        first_step = draw_windows([v.num_frames for v in train], window, 2, np.random.default_rng(1))[0]
        index, start = first_step[1]
        video, frame = train[index].video_id, start + 37
    with pytest.raises(AffectError) as caught:
        train_model(train, dev, tiny_config(window_frames=window, max_epochs=2), progress=False)
    message = str(caught.value)
    assert f"training: video {video!r}" in message and f"from frame {frame} on" in message, message
    assert "epoch 1" in message


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_state_in_evaluation_is_an_error_not_a_dev_ccc_of_zero(tiny_corpus, monkeypatch, value):
    """Before, the dev metrics left non-finite predictions out: a video of them scored CCC 0, early stopping went on
    as if that were measured. Now evaluation (every epoch's dev CCC and the final metrics) names the video and frame."""
    from affect_core.inference import evaluate_videos

    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    plant_non_finite_state(monkeypatch, row=1, frame=41, when="eval", value=value)
    with pytest.raises(AffectError, match=rf"evaluation: video '{dev[1].video_id}'.* from frame 41 on"):
        train_model(train, dev, tiny_config(max_epochs=2), progress=False)
    model = AffectModel(ModelConfig(model="lstm-kf", input_dim=train[0].features.shape[1]))
    with pytest.raises(AffectError, match=rf"video '{dev[1].video_id}'.* from frame 41 on"):
        evaluate_videos(model, None, dev)


def test_metrics_refuse_a_non_finite_prediction_on_a_labelled_frame():
    from affect_core.metrics import sequence_metrics

    gold = np.linspace(-0.5, 0.5, 50)
    pred = gold.copy()
    pred[10] = np.nan
    gold_unlabelled = gold.copy()
    gold_unlabelled[10] = np.nan
    assert sequence_metrics(pred, gold_unlabelled)["ccc"] == pytest.approx(1.0)  # unlabelled there: left out
    with pytest.raises(AffectError, match="prediction is nan at frame 10, a labelled frame"):
        sequence_metrics(pred, gold)
    with pytest.raises(AffectError, match="at frame 0"):
        sequence_metrics(np.full(50, np.nan), gold)  # was a CCC of 0.0


def test_affect_train_with_a_non_finite_dev_prediction_exits_non_zero_with_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from affect_cli.main import app
    from affect_core.data.dataset import ingest
    from affect_core.synth import write_corpus

    corpus = generate_corpus(SynthConfig(videos_per_split=2, frames=200, appearance_dim=4, geometric_dim=4, seed=4))
    write_corpus(corpus, tmp_path / "src", layout="csv", progress=False)
    ingest(str(tmp_path / "src"), str(tmp_path / "ds"), layout="csv", progress=False)
    plant_non_finite_state(monkeypatch, row=0, frame=12, when="eval")
    args = ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--model", "lstm-kf", "--epochs", "2"]
    result = CliRunner().invoke(app, [*args, "--window-frames", "0", "--no-progress"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: evaluation: video 'dev_1'"), result.output
    assert "from frame 12 on" in lines[0] and "Traceback" not in result.output


def test_dev_videos_with_a_40_s_stretch_without_a_face_still_steer_training():
    """The issue's scenario: dev videos that lose the face for 40 s. The predict-only steps used to drive the filter to
    NaN, the dev CCC read 0.000 at every epoch and early stopping kept the untrained state. Now the dev CCC is a
    measured number, the best epoch is a trained one, and the learned lag moves from 0 towards the planted one."""
    torch.set_num_threads(1)
    lag = 25
    corpus = generate_corpus(
        SynthConfig(
            videos_per_split=2,
            frames=1400,
            appearance_dim=6,
            geometric_dim=6,
            seed=2,
            lag_s=lag / 25.0,
            feature_noise=0.5,
            no_face_share=0.0,
        )
    )
    dev = corpus.split("dev")
    for video in dev:
        video.features[200:1200] = np.nan  # 40 s at 25 fps
    config = RunConfig(
        model=ModelConfig(model="lstm-kf", align="adaptive", window=40, q_init=0.1, r_init=1e-3),
        train=TrainConfig(max_epochs=6, window_frames=350, batch_size=4, patience=6, lr=3e-3, lr_align=0.1, seed=0),
    )
    result = train_model(corpus.split("train"), dev, config, progress=False)
    scores = [r.dev_ccc for r in result.history]
    assert all(math.isfinite(s) for s in scores) and max(abs(s) for s in scores) > 0.05, scores
    assert result.best_epoch > 1 and scores[result.best_epoch - 1] > scores[0], scores
    assert lag / 2 < result.mu_frames < 2 * lag, result.mu_frames  # from 0, more than half way to the planted lag
