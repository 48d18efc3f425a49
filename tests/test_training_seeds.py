"""The training loop: seeds trained together give what training each seed alone gives, one seed gives what the
plain recipe gives (tests/reference_training.py), and the compiled LSTM equals torch.nn.LSTM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.errors import AffectError
from affect_core.experiment import load_seed_outcome, plan_seed_tasks, run_seed, run_seeds
from affect_core.frontend import FusedLSTM
from affect_core.model import AffectModel
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, generate_corpus
from affect_core.training import train_model, train_seeds
from tests.reference_training import train_reference

SEEDS = [0, 1, 2]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_corpus():
    return generate_corpus(SynthConfig(videos_per_split=2, frames=300, appearance_dim=6, geometric_dim=8, seed=5))


def run_config(model: str, align: str, window: int | None, max_epochs: int, patience: int) -> RunConfig:
    return RunConfig(
        model=ModelConfig(model=model, align=align, window=20),
        train=TrainConfig(max_epochs=max_epochs, patience=patience, window_frames=window, batch_size=2),
    )


@pytest.mark.parametrize(
    ("model", "align", "window", "max_epochs", "patience"),
    [
        ("lstm-kf", "adaptive", 100, 4, 2),  # truncated windows drawn per seed
        ("lstm-ekf", "adaptive", None, 8, 3),  # full-length BPTT; seed 1 trains 8 epochs, seeds 0 and 2 stop at 4
        ("baseline", "none", 100, 3, 2),
    ],
)
def test_each_seed_equals_training_it_alone(tiny_corpus, model, align, window, max_epochs, patience):
    torch.set_num_threads(1)
    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    config = run_config(model, align, window, max_epochs, patience)
    batched = train_seeds(train, dev, config, SEEDS, progress=False)
    assert len(batched) == len(SEEDS)
    for seed, got in zip(SEEDS, batched, strict=True):
        seed_config = copy.deepcopy(config)
        seed_config.train.seed = seed
        alone = train_model(train, dev, seed_config, progress=False)
        assert got.config.train.seed == seed
        assert (got.epochs, got.best_epoch) == (alone.epochs, alone.best_epoch)
        assert [r.epoch for r in got.history] == [r.epoch for r in alone.history]
        for a, b in zip(got.history, alone.history, strict=True):
            assert a.dev_ccc == pytest.approx(b.dev_ccc, abs=TOL)
            assert a.train_loss == pytest.approx(b.train_loss, abs=TOL)
        expected = alone.model.state_dict()
        for key, value in got.model.state_dict().items():
            assert torch.allclose(value, expected[key], atol=TOL), key
        assert got.mu_frames == pytest.approx(alone.mu_frames, abs=TOL)
        assert got.sigma2 == pytest.approx(alone.sigma2, abs=TOL)
        assert got.metrics.keys() == alone.metrics.keys()
        for split, per_dim in alone.metrics.items():
            for dim, values in per_dim.items():
                for name, value in values.items():
                    assert got.metrics[split][dim][name] == pytest.approx(value, abs=TOL), (split, dim, name)
    if model == "lstm-ekf":
        assert len({r.epochs for r in batched}) > 1, "the early-stopping case must stop seeds at different epochs"


@pytest.mark.parametrize(
    ("model", "align", "window", "max_epochs", "patience"),
    [
        ("lstm-kf", "adaptive", 100, 4, 2),
        ("lstm-ekf", "adaptive", None, 6, 2),
        ("baseline", "none", None, 3, 2),
        ("lstm-kf", "manual", None, 3, 2),
    ],
)
def test_one_seed_equals_the_plain_recipe(tiny_corpus, model, align, window, max_epochs, patience):
    """Per-seed results of the training loop equal the plain recipe's (torch.nn layers, one model, video-by-video
    dev CCC) to float32 rounding: the same epochs, losses, dev CCC and best weights."""
    torch.set_num_threads(1)
    train, dev = tiny_corpus.split("train"), tiny_corpus.split("dev")
    config = run_config(model, align, window, max_epochs, patience)
    config.train.seed = 1
    got = train_model(train, dev, config, progress=False)
    history, best_state = train_reference(train, dev, config)
    assert [r.epoch for r in got.history] == [h[0] for h in history]
    for record, (_, loss, ccc) in zip(got.history, history, strict=True):
        assert record.train_loss == pytest.approx(loss, abs=TOL)
        assert record.dev_ccc == pytest.approx(ccc, abs=TOL)
    fe = got.model.frontend
    torch.testing.assert_close(fe.head_weight[0], best_state["head.weight"], atol=TOL, rtol=0)
    torch.testing.assert_close(fe.lstm_weight_hh[0], best_state["lstm.weight_hh_l0"], atol=TOL, rtol=0)
    torch.testing.assert_close(fe.ff0_weight[0], best_state["feed_forward.0.weight"], atol=TOL, rtol=0)
    if align == "adaptive":
        assert got.mu_frames == pytest.approx(float(20 * torch.tanh(best_state["alignment.mu_raw"])), abs=TOL)


def test_gradients_of_a_model_of_seeds_are_each_seeds_gradients():
    torch.set_num_threads(1)
    config = ModelConfig(model="lstm-ekf", align="adaptive", input_dim=5, window=10)
    stack = AffectModel(config, seeds=[0, 1, 2])
    x = torch.randn(2, 60, 5)
    out = stack.causal(x)
    sum((stack.noncausal(z, s) ** 2).sum() for s, z in enumerate(out.states)).backward()
    for s in range(3):
        single = stack.seed_model(s)
        (single(x).y ** 2).sum().backward()
        grads = {name: p.grad for name, p in single.named_parameters()}
        for name, p in stack.frontend.named_parameters():
            assert torch.allclose(p.grad[s], grads[f"frontend.{name}"][0], atol=1e-4, rtol=1e-4), name
        for kind in ("filters", "alignments"):  # stacked along the seed axis: row s is seed s's gradient
            for name, p in getattr(stack, kind).named_parameters():
                assert torch.allclose(p.grad[s], grads[f"{kind}.{name}"][0], atol=1e-4, rtol=1e-4), f"{kind}.{name}"


def stacked_weights(lstms: list[torch.nn.LSTM]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LSTMs' w_ih, w_hh and summed biases stacked along a seed axis, as leaves that take gradients."""
    w_ih = torch.stack([m.weight_ih_l0 for m in lstms]).detach().requires_grad_()
    w_hh = torch.stack([m.weight_hh_l0 for m in lstms]).detach().requires_grad_()
    bias = torch.stack([m.bias_ih_l0 + m.bias_hh_l0 for m in lstms]).detach().requires_grad_()
    return w_ih, w_hh, bias


def test_run_seeds_writes_what_run_seed_writes_and_resumes(tiny_corpus, tmp_path):
    torch.set_num_threads(1)
    config = run_config("lstm-kf", "adaptive", 100, 2, 5)
    run_url = str(tmp_path / "run")
    tasks = plan_seed_tasks(config, "arousal", [0, 1])
    trained: list[str] = []
    outcomes = run_seeds(tasks, tiny_corpus, run_url, on_epoch=lambda task, _: trained.append(task.key))
    assert [o.task.key for o in outcomes] == ["arousal-seed0", "arousal-seed1"]
    assert sorted(set(trained)) == ["arousal-seed0", "arousal-seed1"]
    alone = run_seed(tasks[1], tiny_corpus, str(tmp_path / "alone"))
    assert [(r["split"], r["dimension"], r["seed"]) for r in outcomes[1].rows] == [
        (r["split"], r["dimension"], r["seed"]) for r in alone.rows
    ]
    for got, expected in zip(outcomes[1].rows, alone.rows, strict=True):
        assert got["ccc"] == pytest.approx(expected["ccc"], abs=TOL)
    assert load_seed_outcome(tasks[0], resolve(run_url)) is not None
    trained.clear()
    more = plan_seed_tasks(config, "arousal", [0, 1, 2])
    resumed = run_seeds(more, tiny_corpus, run_url, resume=True, on_epoch=lambda t, _: trained.append(t.key))
    assert set(trained) == {"arousal-seed2"}  # finished seeds are not trained again
    assert [o.task.key for o in resumed] == ["arousal-seed0", "arousal-seed1", "arousal-seed2"]
    assert resumed[0].rows == outcomes[0].rows


def test_train_run_with_seed_groups_gives_the_one_by_one_results(tiny_corpus, tmp_path):
    """`affect train --seeds-per-worker K`: both models' seeds trained in stacks of K give the rows of the
    one-by-one run (seeds 0-2 of arousal and valence: stacks of 2 and 1 per model)."""
    import pyarrow.parquet as pq

    from affect_core.experiment import train_run

    torch.set_num_threads(1)
    config = run_config("lstm-kf", "adaptive", None, 2, 5)
    tables = []
    for per_worker in (1, 2):
        run_url = str(tmp_path / f"run{per_worker}")
        train_run(tiny_corpus, run_url, config, dimension="both", seeds=3, progress=False, seeds_per_worker=per_worker)
        rows = pq.read_table(f"{run_url}/results.parquet").to_pandas()
        tables.append(rows.sort_values(["dimension", "seed", "split"]).reset_index(drop=True))
    alone, stacked = tables
    assert len(alone) == len(stacked) == 2 * 3 * 2  # 2 models x 3 seeds x (train, dev)
    assert alone[["dimension", "seed", "split"]].equals(stacked[["dimension", "seed", "split"]])
    np.testing.assert_allclose(stacked["ccc"], alone["ccc"], atol=1e-4)
    np.testing.assert_allclose(stacked["mu_frames"], alone["mu_frames"], atol=1e-3)


def test_seed_groups_keep_models_apart():
    from affect_core.experiment import group_seed_tasks, plan_seed_tasks

    tasks = plan_seed_tasks(run_config("lstm-kf", "none", None, 1, 1), "both", range(5))
    groups = group_seed_tasks(tasks, 2)
    assert [[t.key for t in g] for g in groups] == [
        ["arousal-seed0", "arousal-seed1"], ["arousal-seed2", "arousal-seed3"], ["arousal-seed4"],
        ["valence-seed0", "valence-seed1"], ["valence-seed2", "valence-seed3"], ["valence-seed4"],
    ]  # fmt: skip
    with pytest.raises(AffectError, match="seeds per worker"):
        group_seed_tasks(tasks, 0)


@pytest.mark.parametrize("threads", [1, 3])
def test_fused_lstm_equals_torch_lstm_in_float32(threads):
    """The compiled CPU LSTM (input projection inside the compiled recurrence) against nn.LSTM: outputs and the
    gradients of the inputs, both weight matrices and the biases."""
    torch.manual_seed(2)
    seeds, batch, steps, width, hidden = 3, 2, 90, 7, 16
    lstms = [torch.nn.LSTM(width, hidden, batch_first=True) for _ in range(seeds)]
    x = torch.randn(seeds, batch, steps, width, requires_grad=True)
    w_ih, w_hh, bias = stacked_weights(lstms)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = x.reshape(seeds, batch * steps, width).mT  # (S, D, B*T)
        zeros = torch.zeros(seeds, batch, hidden)
        got, _ = FusedLSTM.apply(inputs.contiguous(), w_ih, w_hh, bias, zeros, zeros, True)  # (S, B, T, H)
        grads = torch.autograd.grad((got**3).sum(), [x, w_ih, w_hh, bias])
        with torch.no_grad():
            assert torch.equal(FusedLSTM.apply(inputs.contiguous(), w_ih, w_hh, bias, zeros, zeros, False)[0], got)
    finally:
        torch.set_num_threads(previous)
    for s, lstm in enumerate(lstms):
        xs = x[s].detach().requires_grad_()
        expected, _ = lstm(xs)
        torch.testing.assert_close(got[s], expected, atol=2e-6, rtol=1e-5)
        g_x, g_ih, g_hh, g_b_ih, _ = torch.autograd.grad((expected**3).sum(), [xs, *lstm.parameters()])
        for mine, theirs in ((grads[0][s], g_x), (grads[1][s], g_ih), (grads[2][s], g_hh), (grads[3][s], g_b_ih)):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
