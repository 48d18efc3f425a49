"""`affect promote MODEL_URL ALIAS_URL`: an alias names the model in use, keeps every promotion, rolls back, and
`affect score --model ALIAS_URL` scores with the model it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.data.dataset import ingest
from affect_core.synth import SynthConfig, write_corpus

runner = CliRunner()


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A tiny dataset and two model bundles trained on it (other models, so other model ids)."""
    root = tmp_path_factory.mktemp("promote")
    write_corpus(SynthConfig(videos_per_split=1, frames=200, appearance_dim=4, geometric_dim=4), root / "c", "csv")
    dataset = str(root / "dataset")
    ingest(str(root / "c"), dataset, layout="csv", progress=False)
    for name, model in (("a", "lstm-kf"), ("b", "baseline")):
        invoke("train", dataset, "--out", root / name, "--dimension", "arousal", "--model", model, "--epochs", "1",
               "--no-ray", "--no-progress")  # fmt: skip
    return dataset, str(root / "a" / "model"), str(root / "b" / "model")


def model_ids(predictions: Path) -> set[str]:
    """The model ids in the current version of a predictions table."""
    from deltalake import DeltaTable

    return set(DeltaTable(str(predictions)).to_pyarrow_table(columns=["model_id"]).column("model_id").to_pylist())


def test_promote_score_and_roll_back(two_models: tuple[str, str, str], tmp_path: Path) -> None:
    dataset, first, second = two_models
    alias = tmp_path / "models" / "current"
    invoke("promote", first, alias)
    invoke("score", dataset, "--model", alias, "--out", tmp_path / "p1", "--no-progress")
    out = invoke("promote", second, alias)
    assert "promote; 2 change(s) kept" in out
    invoke("score", dataset, "--model", alias, "--out", tmp_path / "p2", "--no-progress")
    ids_first, ids_second = model_ids(tmp_path / "p1"), model_ids(tmp_path / "p2")
    assert len(ids_first) == len(ids_second) == 1 and ids_first != ids_second

    out = invoke("promote", "--rollback", alias)
    assert "rollback; 3 change(s) kept" in out
    state = json.loads((alias / "alias.json").read_text())
    assert state["model"] == first
    assert [(e["action"], e["model"]) for e in state["history"]] == [
        ("promote", first),
        ("promote", second),
        ("rollback", first),
    ]
    invoke("score", dataset, "--model", alias, "--out", tmp_path / "p3", "--no-progress")
    assert model_ids(tmp_path / "p3") == ids_first
    assert [p.name for p in alias.iterdir()] == ["alias.json"]  # written whole, no temporary left

    error = invoke("promote", "--rollback", alias, code=1)  # the first model has nothing before it
    assert "nothing to roll back to" in error and len(error.strip().splitlines()) == 1


def test_a_model_that_does_not_load_is_not_promoted(two_models: tuple[str, str, str], tmp_path: Path) -> None:
    _, first, _ = two_models
    alias = tmp_path / "current"
    invoke("promote", first, alias)
    before = (alias / "alias.json").read_bytes()
    error = invoke("promote", tmp_path / "no-such-model", alias, code=1)
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1
    assert (alias / "alias.json").read_bytes() == before
    assert "an alias, not a model bundle" in invoke("promote", alias, tmp_path / "other", code=1)
