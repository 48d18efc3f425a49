"""The single-process training loop: deterministic, resumable, early-stopping, and it learns the planted lag."""

import math

import pytest
import torch

from affect_core.config import FeatureConfig, ModelConfig, RunConfig, TrainConfig
from affect_core.errors import AffectError
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
    # The earlier layout: group 0 = the front-end's 10 tensors, then per seed the filter's q, r, F, H; group 1 = per
    # seed the alignment's mu_raw, sigma2_raw. Row s of a stacked moment is seed s's own.
    front, filters = stacked["param_groups"][0]["params"][:10], stacked["param_groups"][0]["params"][10:]
    aligns = stacked["param_groups"][1]["params"]
    assert len(filters) == 4 and len(aligns) == 2

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
