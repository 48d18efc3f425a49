"""`make gpu-check`'s comparisons run end to end here, with the CPU standing in for the GPU (float64 against
float32 would differ; the same device must agree exactly), so the script a lent GPU machine runs is known to work."""

from __future__ import annotations

import pytest
import torch

from affect_core.synth import SynthConfig, generate_corpus
from benchmarks import gpu_check


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SynthConfig(videos_per_split=2, frames=400, appearance_dim=4, geometric_dim=4, seed=5))


def test_training_and_scoring_checks_pass_on_one_device(corpus, capsys):
    torch.set_num_threads(1)
    assert gpu_check.check_training(corpus, "lstm-kf", accelerator="cpu", epochs=1)
    assert gpu_check.check_scoring(corpus, accelerator="cpu")
    out = capsys.readouterr().out
    assert "seed 1" in out and "FAIL" not in out


def test_without_a_gpu_it_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_check"])
    assert gpu_check.main() == 2
    assert "no CUDA device" in capsys.readouterr().out
