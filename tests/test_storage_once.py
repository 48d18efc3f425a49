"""Storage is resolved once, where a job enters the library: each URL of a job becomes a filesystem once, and the
functions below the entry point are handed that Location (STYLE.md: a concept decided at one layer, not at every
layer it passes through)."""

from __future__ import annotations

import pickle
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_scoring_table import bundle_for

from affect_core import storage
from affect_core.alias import promote
from affect_core.config import RunConfig
from affect_core.data import dataset as ds
from affect_core.data import delta
from affect_core.data.export import export_table
from affect_core.data.source_videos import SourceRequest
from affect_core.experiment import train_run
from affect_core.report import write_report
from affect_core.scoring import score_dataset
from affect_core.synth import SynthConfig, write_corpus


class Calls:
    """URLs handed to ``storage.resolve`` (a Location handed on is no resolution) and ``URL@VERSION`` parses."""

    def __init__(self) -> None:
        self.resolved: Counter[str] = Counter()
        self.parsed: Counter[str] = Counter()


def count_storage(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """From now on, count every resolution and version parse, in whichever module calls them (a module that did
    ``from affect_core.storage import resolve`` holds its own name for it: every such name is patched)."""
    calls = Calls()
    resolve, parse = storage.resolve, delta.parse_versioned_url

    def counting_resolve(url, storage_options=None):
        if not isinstance(url, storage.Location):
            calls.resolved[str(url)] += 1
        return resolve(url, storage_options)

    def counting_parse(url):
        calls.parsed[str(url)] += 1
        return parse(url)

    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith(("affect_core", "tuning", "flows")):
            continue
        for name, value in list(vars(module).items()):
            if value is resolve:
                monkeypatch.setattr(module, name, counting_resolve)
            elif value is parse:
                monkeypatch.setattr(module, name, counting_parse)
    return calls


def corpus(root: Path) -> str:
    write_corpus(SynthConfig(videos_per_split=2, frames=80, appearance_dim=3, geometric_dim=2, seed=3), root, "csv")
    return str(root)


def test_one_ingest_resolves_each_url_once(tmp_path, monkeypatch):
    source, target = corpus(tmp_path / "src"), str(tmp_path / "ds")
    calls = count_storage(monkeypatch)
    ds.ingest(source, target, layout="csv", progress=False)
    scratch = [url for url in calls.resolved if url.startswith("memory://affect-ingest-")]  # one view per video read
    assert calls.resolved[source] == 1 and calls.resolved[target] == 1, calls.resolved
    assert set(calls.resolved) == {source, target, *scratch} and all(calls.resolved[url] == 1 for url in scratch)


def test_one_score_resolves_each_url_once_and_parses_the_dataset_version_once(tmp_path, monkeypatch):
    data = str(tmp_path / "ds")
    version = ds.ingest(corpus(tmp_path / "src"), data, layout="csv", progress=False).version
    model, out = bundle_for(data, 0, tmp_path, "model"), str(tmp_path / "predictions")
    pinned = f"{data}@{version}"
    calls = count_storage(monkeypatch)
    result = score_dataset(pinned, model, out, progress=False)
    assert result.videos == 6 and result.frames > 0
    assert calls.resolved == Counter({data: 1, model: 1, out: 1}), calls.resolved
    assert calls.parsed == Counter({pinned: 1}), calls.parsed


def test_export_and_promote_resolve_each_url_once(tmp_path, monkeypatch):
    data = str(tmp_path / "ds")
    ds.ingest(corpus(tmp_path / "src"), data, layout="csv", progress=False)
    model, alias, dest = bundle_for(data, 0, tmp_path, "model"), str(tmp_path / "alias"), str(tmp_path / "out.csv")
    calls = count_storage(monkeypatch)
    export_table(f"{data}@0", dest)
    promote(model, alias)
    assert calls.resolved == Counter({data: 1, dest: 1, model: 1, alias: 1}), calls.resolved
    assert calls.parsed == Counter({f"{data}@0": 1}), calls.parsed


def test_training_and_its_report_resolve_the_run_once(tmp_path, monkeypatch):
    data, run = str(tmp_path / "ds"), str(tmp_path / "run")
    ds.ingest(corpus(tmp_path / "src"), data, layout="csv", progress=False)
    config = RunConfig()
    config.model.model, config.train.max_epochs = "lstm-kf", 1
    videos = ds.read_corpus(data)
    calls = count_storage(monkeypatch)
    train_run(videos, run, config, dimension="arousal", seeds=1, progress=False)
    assert calls.resolved == Counter({run: 1}), calls.resolved  # checkpoints, seed bundles, model: below the run
    calls.resolved.clear()
    write_report(run, dataset_url=data)
    assert calls.resolved == Counter({run: 1, data: 1}), calls.resolved
    assert calls.parsed == Counter({data: 1}), calls.parsed


def test_a_source_request_sent_to_a_ray_task_leaves_its_location_behind(tmp_path):
    """Ray is the one boundary a Location does not cross: its filesystem could carry credentials into Ray's object
    store; the task resolves the request's URL on its side."""
    request = SourceRequest(str(tmp_path), "csv")
    assert request.location.path == str(tmp_path) and request.where == str(tmp_path)
    sent = pickle.dumps(request)
    assert b"LocalFileSystem" not in sent and b"_location" not in sent
    received = pickle.loads(sent)
    assert received == request and received.location.path == str(tmp_path)
