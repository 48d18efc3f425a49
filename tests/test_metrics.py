"""CCC, RMSE and Pearson against their formulas and known cases; loss (17) behaviour."""

import numpy as np
import pytest
import torch

from affect_core.losses import affect_loss, label_derivatives
from affect_core.metrics import average_over_sequences, ccc, pcc, rmse, sequence_metrics


def formula_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """(18) with population moments, written independently of the implementation."""
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (x.var() + y.var() + (mx - my) ** 2)


@pytest.fixture
def series() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.cumsum(rng.normal(size=500)) * 0.05


def test_ccc_identical_is_one(series):
    assert sequence_metrics(series, series)["ccc"] == pytest.approx(1.0, abs=1e-9)


def test_ccc_negated_is_minus_one(series):
    centred = series - series.mean()
    assert sequence_metrics(-centred, centred)["ccc"] == pytest.approx(-1.0, abs=1e-9)


def test_offset_lowers_ccc_but_not_pearson(series):
    m = sequence_metrics(series + 0.5, series)
    assert m["ccc"] < 0.99
    assert m["pcc"] == pytest.approx(1.0, abs=1e-9)
    assert m["rmse"] == pytest.approx(0.5, abs=1e-9)


def test_ccc_matches_formula_on_random_data():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = rng.normal(size=300), rng.normal(size=300) * 2 + rng.normal(size=300)
        assert sequence_metrics(x, y)["ccc"] == pytest.approx(formula_ccc(x, y), abs=1e-9)
        assert sequence_metrics(x, y)["pcc"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)


def test_unlabelled_frames_are_left_out(series):
    gold = series.copy()
    gold[100:200] = np.nan
    pred = series.copy()
    pred[100:200] = 99.0  # whatever is predicted on unlabelled frames must not count
    assert sequence_metrics(pred, gold)["ccc"] == pytest.approx(1.0, abs=1e-9)


def test_batched_torch_metrics_are_per_sequence():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 100))
    y = rng.normal(size=(3, 100))
    values = ccc(torch.tensor(x), torch.tensor(y))
    assert values.shape == (3,)
    for i in range(3):
        assert float(values[i]) == pytest.approx(formula_ccc(x[i], y[i]), abs=1e-9)
    assert rmse(torch.tensor(x), torch.tensor(x)).abs().max() < 1e-5
    assert pcc(torch.tensor(x), torch.tensor(2 * x + 1)).sub(1).abs().max() < 1e-9


def test_average_over_sequences_is_a_plain_mean():
    rows = [{"ccc": 0.2, "rmse": 1.0, "pcc": 0.5}, {"ccc": 0.6, "rmse": 3.0, "pcc": 0.7}]
    assert average_over_sequences(rows) == pytest.approx({"ccc": 0.4, "rmse": 2.0, "pcc": 0.6})


def test_label_derivatives_are_central_differences_per_second():
    t = torch.arange(50, dtype=torch.float64) / 25.0
    labels = 0.3 * t**2  # d = 0.6 t, d2 = 0.6
    d, d2, valid = label_derivatives(labels, fps=25.0)
    assert torch.allclose(d[1:-1], 0.6 * t[1:-1], atol=1e-9)
    assert torch.allclose(d2[2:-2], torch.full_like(d2[2:-2], 0.6), atol=1e-9)
    assert valid.all()


def test_loss_rewards_a_perfect_prediction():
    fps = 25.0
    t = torch.arange(400, dtype=torch.float64) / fps
    level = 0.5 * torch.sin(t)
    d, d2, _ = label_derivatives(level, fps)
    perfect = torch.stack([level, d, d2], -1).unsqueeze(0)
    worse = torch.stack([level * 0.5, d, d2], -1).unsqueeze(0)
    labels = level.view(1, -1, 1)
    assert float(affect_loss(perfect, labels, fps=fps)) == pytest.approx(-1.0, abs=1e-6)
    assert float(affect_loss(worse, labels, fps=fps)) > float(affect_loss(perfect, labels, fps=fps))
