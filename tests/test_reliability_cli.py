"""Bad input through the `affect` command line, end to end: every case exits non-zero with exactly one output line
that names the file, row, attribute or argument and what was expected, never a traceback, and leaves its destination
exactly as it was (earlier dataset versions still readable, nothing new visible).

The malformed corpora reuse the mutations of tests/test_bad_input.py (which checks the same refusals at the library
level); this file adds the CLI's own arguments, run configuration files and model bundles, and checks the whole path a
user takes: argument parsing, the command, the one-line error report and the exit status.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from affect_cli.main import app
from affect_core.data.dataset import list_versions, read_corpus
from affect_core.synth import SynthConfig, write_corpus
from tests.test_bad_input import CASES as LIBRARY_CASES
from tests.test_bad_input import DATA, _csv_parquet_features

runner = CliRunner()
TINY = SynthConfig(videos_per_split=2, frames=300, appearance_dim=6, geometric_dim=8)
QUICK_TRAIN = ["--dimension", "arousal", "--model", "baseline", "--align", "none", "--epochs", "1"]
QUICK_TRAIN += ["--window-frames", "100", "--no-progress"]

# Malformed corpora of the three layouts, taken from the library-level table by id.
LAYOUT_CASE_IDS = [
    "arff-truncated-file",
    "arff-utf16",
    "arff-latin1-bytes",
    "arff-label-nan",
    "arff-label-infinite",
    "arff-missing-attribute",
    "avec-empty-corpus",
    "csv-duplicate-id-across-splits",
    "csv-missing-split",
    "csv-wrong-encoding",
    "csv-gap-claims-billion-frames",
    "csv-absurd-frame-number",
    "csv-feature-dimension-differs",
    "csv-label-partly-nan",
    "csv-id-escapes-root",
    "parquet-truncated",
    "parquet-empty-file",
    "parquet-label-above-one",
    "parquet-string-feature",
    "parquet-id-escapes-root",
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``root`` with its size and modification time ("exactly as it was")."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def run_cli(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str, *names: str) -> str:
    """Non-zero exit, one line on stderr and nothing on stdout, no traceback; the line matches and names ``names``."""
    output = (result.stdout + result.stderr).strip()
    assert result.exit_code not in (0, None), output
    assert isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in output
    assert result.stdout.strip() == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- corpora, via ingest
@pytest.fixture(scope="module")
def destinations(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """One existing dataset (one version of the valid fixture) per layout: the destination bad input must not touch."""
    base = tmp_path_factory.mktemp("destinations")
    made = {}
    for layout in ("avec2016", "csv", "parquet"):
        source = base / f"valid_{layout}"
        shutil.copytree(DATA / ("csv" if layout == "parquet" else layout), source)
        if layout == "parquet":
            _csv_parquet_features(source)
        target = base / f"dataset_{layout}"
        result = run_cli(["ingest", source, target, "--layout", layout, "--no-progress"])
        assert result.exit_code == 0, result.output
        made[layout] = (target, list_versions(str(target))[0])
    return made


LAYOUT_CASES = [c for c in LIBRARY_CASES if c.id in LAYOUT_CASE_IDS]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[c.id for c in LAYOUT_CASES])
def test_malformed_corpus_through_cli_ingest(case, destinations, tmp_path):
    target, version = destinations[case.layout]
    before = snapshot(target)
    source = tmp_path / "src"
    shutil.copytree(DATA / ("csv" if case.layout == "parquet" else case.layout), source)
    case.mutate(source)
    result = run_cli(["ingest", source, target, "--layout", case.layout, "--no-progress"])
    assert_one_line_error(result, case.pattern, case.file)
    assert snapshot(target) == before
    assert list_versions(str(target)) == [version]
    assert read_corpus(str(target)).videos


# --------------------------------------------------------------------- arguments, config files, bundles, datasets
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A generated corpus ingested twice (all features; appearance only), models trained on each, and odd inputs."""
    base = tmp_path_factory.mktemp("world")
    write_corpus(TINY, base / "corpus", "avec2016")  # the release layout: each set once per dimension
    write_corpus(TINY.with_(appearance_dim=5, geometric_dim=0), base / "corpus5", "avec2016")
    for args in (
        ["ingest", base / "corpus", base / "dataset", "--layout", "avec2016"],
        ["ingest", base / "corpus", base / "appearance", "--layout", "avec2016", "--feature-set", "appearance"],
        ["ingest", base / "corpus5", base / "appearance5", "--layout", "avec2016"],
        ["train", base / "dataset", "--out", base / "run", *QUICK_TRAIN],
        ["train", base / "appearance", "--out", base / "run_app", *QUICK_TRAIN],
    ):
        result = run_cli([*args, "--no-progress"] if args[0] == "ingest" else args)
        assert result.exit_code == 0, result.output
    # A dataset without a train split (only dev and test videos).
    write_corpus(TINY, base / "no_train", "csv")
    partition = (base / "no_train" / "partition.csv").read_text().splitlines()
    (base / "no_train" / "partition.csv").write_text("\n".join(r for r in partition if ",train" not in r) + "\n")
    for path in (base / "no_train").rglob("train_*.csv"):
        path.unlink()
    assert run_cli(["ingest", base / "no_train", base / "dataset_no_train", "--layout", "csv"]).exit_code == 0
    # Damaged bundles.
    shutil.copytree(base / "run" / "model", base / "bundle_truncated_weights")
    weights = next((base / "bundle_truncated_weights").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(base / "run" / "model", base / "bundle_truncated_json")
    manifest = base / "bundle_truncated_json" / "bundle.json"
    manifest.write_bytes(manifest.read_bytes()[:50])
    # Run configuration files.
    configs = {
        "bad_yaml.yaml": b"model: [unclosed\n",
        "unknown_section.yaml": b"optimizer:\n  lr: 0.1\n",
        "unknown_key.yaml": b"model:\n  lstm_sise: 3\n",
        "latin1.yaml": "model:\n  model: lstm-kf  # caf\xe9\n".encode("latin-1"),
        "negative_epochs.yaml": b"train:\n  max_epochs: -2\n",
        "negative_lr.yaml": b"train:\n  lr: -0.001\n",
        "section_not_mapping.yaml": b"model: [1, 2]\n",
        "bad_model.json": json.dumps({"model": {"model": "lstm-xkf"}}).encode(),
        "bad_window.yaml": b"model:\n  window: -5\n",
    }
    for name, data in configs.items():
        (base / name).write_bytes(data)
    return {"base": base}


@dataclass
class CliCase:
    id: str
    args: Callable[[Path], list]  # the command line, given the world's base directory
    pattern: str  # regex the one error line must match
    names: Callable[[Path], list[str]]  # strings the line must contain (file, argument)
    dest: str  # relative to base: the destination that must stay exactly as it was (or stay absent)


def _train(config: str | None = None, *extra: str) -> Callable[[Path], list]:
    def args(b: Path) -> list:
        return ["train", b / "dataset", "--out", b / "new_run", *(["--config", b / config] if config else []), *extra]

    return args


def _score(data: str, bundle: str, *extra: str) -> Callable[[Path], list]:
    return lambda b: ["score", b / data, "--model", b / bundle, "--out", b / "new_preds", "--no-progress", *extra]


def _name(*names: str) -> Callable[[Path], list[str]]:
    return lambda b: list(names)


CLI_CASES = [
    # arguments
    CliCase(
        "unknown-model", _train(None, "--model", "lstm-xkf"), r"model must be one of .*'lstm-xkf'", _name(), "new_run"
    ),
    CliCase(
        "unknown-align", _train(None, "--align", "sideways"), r"align must be one of .*'sideways'", _name(), "new_run"
    ),
    CliCase(
        "unknown-dimension",
        _train(None, "--dimension", "dominance"),
        r"dimension must be one of .*'dominance'",
        _name(),
        "new_run",
    ),
    CliCase(
        "negative-epochs", _train(None, "--epochs", "-3"), r"greater than or equal to 1", _name("--epochs"), "new_run"
    ),
    CliCase("zero-seeds", _train(None, "--seeds", "0"), r"greater than or equal to 1", _name("--seeds"), "new_run"),
    CliCase("epochs-not-a-number", _train(None, "--epochs", "many"), r"Invalid value", _name("--epochs"), "new_run"),
    CliCase(
        "unknown-option", _train(None, "--learning-rate", "1"), r"No such option", _name("--learning-rate"), "new_run"
    ),
    CliCase("missing-argument", lambda b: ["train"], r"Missing argument", _name("dataset_url"), "new_run"),
    CliCase("unknown-command", lambda b: ["retrain", b / "dataset"], r"No such command", _name("retrain"), "new_run"),
    CliCase(
        "unknown-layout",
        lambda b: ["ingest", b / "corpus", b / "new_dataset", "--layout", "arff"],
        r"layout 'arff': unknown input layout; expected one of avec2016, csv, parquet",
        _name(),
        "new_dataset",
    ),
    CliCase(
        "unknown-feature-set",
        _train(None, "--feature-set", "audio"),
        r"unknown feature set 'audio'; available: appearance, geometric",
        _name("dataset"),
        "new_run",
    ),
    CliCase(
        "absurd-synth-size",
        lambda b: ["synth", b / "new_corpus", "--frames", str(10**9)],
        r"frames = 1000000000 is invalid; expected at least 2 and at most",
        _name(),
        "new_corpus",
    ),
    # run configuration files
    CliCase("config-bad-yaml", _train("bad_yaml.yaml"), r"not valid YAML/JSON", _name("bad_yaml.yaml"), "new_run"),
    CliCase(
        "config-unknown-section",
        _train("unknown_section.yaml"),
        r"unknown section\(s\) \['optimizer'\]; expected model, features, train",
        _name("unknown_section.yaml"),
        "new_run",
    ),
    CliCase(
        "config-unknown-key",
        _train("unknown_key.yaml"),
        r"model: unknown key\(s\) \['lstm_sise'\]; known: ",
        _name("unknown_key.yaml"),
        "new_run",
    ),
    CliCase(
        "config-not-utf8", _train("latin1.yaml"), r"config file is not UTF-8 text", _name("latin1.yaml"), "new_run"
    ),
    CliCase(
        "config-negative-epochs",
        _train("negative_epochs.yaml"),
        r"max_epochs must be an integer >= 1, got -2",
        _name("negative_epochs.yaml"),
        "new_run",
    ),
    CliCase(
        "config-negative-lr",
        _train("negative_lr.yaml"),
        r"lr must be a finite number >= 0, got -0.001",
        _name("negative_lr.yaml"),
        "new_run",
    ),
    CliCase(
        "config-section-not-mapping",
        _train("section_not_mapping.yaml"),
        r"model: expected a mapping, got list",
        _name("section_not_mapping.yaml"),
        "new_run",
    ),
    CliCase(
        "config-bad-model",
        _train("bad_model.json"),
        r"model must be one of .*'lstm-xkf'",
        _name("bad_model.json"),
        "new_run",
    ),
    CliCase(
        "config-bad-window",
        _train("bad_window.yaml"),
        r"window must be >= 0 frames",
        _name("bad_window.yaml"),
        "new_run",
    ),
    CliCase("config-missing", _train("nowhere.yaml"), r"config file not found", _name("nowhere.yaml"), "new_run"),
    # datasets
    CliCase(
        "missing-dataset",
        lambda b: ["train", b / "no_such_dataset", "--out", b / "new_run", *QUICK_TRAIN],
        r"does not exist; expected a dataset written by affect ingest",
        _name("no_such_dataset"),
        "new_run",
    ),
    CliCase(
        "missing-source",
        lambda b: ["ingest", b / "no_such_corpus", b / "new_dataset", "--layout", "csv"],
        r"source does not exist; expected a directory in the csv layout",
        _name("no_such_corpus"),
        "new_dataset",
    ),
    CliCase(
        "dataset-without-train-split",
        lambda b: ["train", b / "dataset_no_train", "--out", b / "new_run", *QUICK_TRAIN],
        r"training: the train split has no videos",
        _name(),
        "new_run",
    ),
    # model bundles scored against datasets
    CliCase(
        "model-of-other-feature-set",
        _score("appearance", "run/model"),
        r"the data has 12 features but the model was trained on 28 features of set 'appearance\+geometric'",
        _name("new_preds"),
        "new_preds",
    ),
    CliCase(
        "model-of-other-feature-dimension",
        _score("appearance5", "run_app/model"),
        r"the data has 10 features but the model was trained on 12 features of set 'appearance'",
        _name("new_preds"),
        "new_preds",
    ),
    CliCase(
        "bundle-truncated-weights",
        _score("dataset", "bundle_truncated_weights"),
        r"not a safetensors weights file",
        _name("bundle_truncated_weights"),
        "new_preds",
    ),
    CliCase(
        "bundle-truncated-manifest",
        _score("dataset", "bundle_truncated_json"),
        r"bundle.json: not valid JSON; expected an affect model bundle",
        _name("bundle_truncated_json"),
        "new_preds",
    ),
    CliCase(
        "bundle-missing",
        _score("dataset", "no_such_bundle"),
        r"bundle.json missing",
        _name("no_such_bundle"),
        "new_preds",
    ),
    CliCase(
        "score-unknown-split",
        _score("dataset", "run/model", "--split", "holdout"),
        r"split 'holdout' has no videos; available: train, dev, test",
        _name("dataset"),
        "new_preds",
    ),
    CliCase(
        "evaluate-without-predictions",
        lambda b: ["evaluate", b / "no_such_preds", b / "dataset"],
        r"no predictions here",
        _name("no_such_preds"),
        "no_such_preds",
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_bad_argument_config_bundle_or_dataset(case, world):
    base = world["base"]
    dest = base / case.dest
    watched = [base / "dataset", base / "run", dest]
    before = [snapshot(p) for p in watched]
    versions = list_versions(str(base / "dataset"))
    result = run_cli(case.args(base))
    assert_one_line_error(result, case.pattern, *case.names(base))
    assert [snapshot(p) for p in watched] == before
    assert not dest.exists() or before[-1]
    assert list_versions(str(base / "dataset")) == versions


def test_the_corpus_of_bad_inputs_is_large_and_distinct():
    ids = [c.id for c in LAYOUT_CASES] + [c.id for c in CLI_CASES]
    assert len(LAYOUT_CASES) == len(LAYOUT_CASE_IDS)
    assert len(set(ids)) == len(ids) >= 50
    assert {c.layout for c in LAYOUT_CASES} == {"avec2016", "csv", "parquet"}
