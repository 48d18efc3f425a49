"""A training run over seeds: which models to train, one seed's work, the results table and the paper-style summary.

Layout of RUN_URL:

    results.parquet            one row per model, seed and split (schema: RESULT_COLUMNS)
    summary.md                 mean and std over seeds, laid out like the paper's Tables I-IV
    model/                     the model bundle ``affect score`` takes (per model name, its best seed by dev CCC,
                               with its uncertainty calibrated on dev: :mod:`affect_core.calibration`)
    seeds/<name>-seed<k>/      every seed's bundle
    checkpoints/<name>-seed<k>.pt   training checkpoints of a seed, or <name>-seeds<k>-<l>-... of seeds trained
                               together (``--resume`` continues from them)

This module owns what a run writes. It trains groups of seeds one after the other in one process; ``tuning`` runs
the same :func:`run_seeds` on Ray, a group per worker.
"""

from __future__ import annotations

import copy
import io
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affect_core.artifact import ModelBundle, TrainedModel, load_bundle, save_bundle
from affect_core.config import RunConfig, check_choice, config_json
from affect_core.data.records import Corpus
from affect_core.errors import AffectError
from affect_core.parallel import Workers
from affect_core.storage import Location, Where, exists, read_bytes, resolve, write_bytes_atomic
from affect_core.training import EpochRecord, TrainResult, train_seeds

TRAIN_DIMENSIONS = ("arousal", "valence", "both", "joint")
RESULT_COLUMNS = [
    ("model", pa.string()),
    ("align", pa.string()),
    ("dimension", pa.string()),
    ("joint", pa.bool_()),
    ("seed", pa.int32()),
    ("split", pa.string()),
    ("ccc", pa.float64()),
    ("rmse", pa.float64()),
    ("pcc", pa.float64()),
    ("mu_frames", pa.float64()),
    ("sigma2", pa.float64()),
    ("epochs", pa.int32()),
    ("train_seconds", pa.float64()),
    ("node", pa.string()),
    ("name", pa.string()),
    ("rater_lags", pa.string()),  # JSON {rater: [mu_frames, sigma2]} with per-rater targets, else null
]
RESULT_SCHEMA = pa.schema(RESULT_COLUMNS)


@dataclass
class SeedTask:
    """One model to train with one seed. name: "arousal", "valence" or "joint"."""

    name: str
    seed: int
    config: RunConfig

    @property
    def key(self) -> str:
        return f"{self.name}-seed{self.seed}"


@dataclass
class SeedOutcome:
    task: SeedTask
    rows: list[dict[str, Any]]
    bundle_url: str
    dev_ccc: float


def plan_seed_tasks(config: RunConfig, dimension: str, seeds: Iterable[int]) -> list[SeedTask]:
    """One task per model and seed. dimension "both" trains separate arousal and valence models; "joint" one model."""
    check_choice("dimension", dimension, TRAIN_DIMENSIONS)
    names = ["arousal", "valence"] if dimension == "both" else [dimension]
    tasks = []
    for name in names:
        for seed in seeds:
            task_config = copy.deepcopy(config)
            task_config.model.dimension = name
            task_config.train.seed = int(seed)
            tasks.append(SeedTask(name, int(seed), task_config))
    return tasks


def group_seed_tasks(tasks: list[SeedTask], per_group: int) -> list[list[SeedTask]]:
    """The tasks cut into groups of at most ``per_group`` seeds of the same model (name), in order: each group trains
    together (:func:`run_seeds`) in one process or Ray worker."""
    if per_group < 1:
        raise AffectError(f"seeds per worker must be >= 1, got {per_group}")
    by_name: dict[str, list[SeedTask]] = {}
    for task in tasks:
        by_name.setdefault(task.name, []).append(task)
    return [group[i : i + per_group] for group in by_name.values() for i in range(0, len(group), per_group)]


def select_model_features(task: SeedTask, corpus: Corpus) -> None:
    """Per-dimension feature sets (the AVEC2016 release): the task's model reads its own dimension's columns (a joint
    model both dimensions'), recorded in ``task.config.features.columns``. Other corpora: every column."""
    columns = corpus.dimension_columns(task.config.model.affect_dimensions)
    if columns is not None:
        task.config.features.columns = columns


def run_seed(
    task: SeedTask,
    corpus: Corpus,
    run_url: Where,
    *,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    storage_options: dict[str, Any] | None = None,
    node: str | None = None,
    device: str | None = None,
) -> SeedOutcome:
    """:func:`run_seeds` for one seed."""
    callback = None if on_epoch is None else (lambda _task, record: on_epoch(record))
    return run_seeds(
        [task],
        corpus,
        resolve(run_url, storage_options),
        resume=resume,
        progress=progress,
        on_epoch=callback,
        node=node,
        device=device,
    )[0]


def run_seeds(
    tasks: list[SeedTask],
    corpus: Corpus,
    run_url: Where,
    *,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[SeedTask, EpochRecord], None] | None = None,
    storage_options: dict[str, Any] | None = None,
    node: str | None = None,
    device: str | None = None,
    workers: Workers | None = None,
) -> list[SeedOutcome]:
    """Train the seeds of ``tasks`` on the corpus's train split (early stopping on dev) and save each seed's bundle and
    result rows under ``run_url``. The seeds of each model (tasks with the same name and configuration apart from the
    seed) train together as one :func:`affect_core.training.train_seeds` call, checkpointed after every epoch.

    With ``resume``, seeds that finished under ``run_url`` are not trained again, and the others continue from their
    checkpoint. Returns one outcome per task, in the order of ``tasks``.

    workers: data-parallel training (:mod:`affect_core.parallel`): ``corpus`` is this worker's shard; every worker
    calls this with the same tasks; the leader writes the checkpoints, bundles and rows (the others' outcomes carry
    no rows). ``run_url`` is resolved here with ``storage_options`` unless it is a Location resolved before.
    """
    run = resolve(run_url, storage_options)
    outcomes: dict[int, SeedOutcome] = {}
    groups: dict[str, list[int]] = {}
    for index, task in enumerate(tasks):
        select_model_features(task, corpus)
        if resume:
            done = load_seed_outcome(task, run)
            if done is not None:
                outcomes[index] = done
                continue
        variant = copy.deepcopy(task.config)
        variant.train.seed = 0
        groups.setdefault(task.name + "\n" + config_json(variant), []).append(index)
    train, dev = corpus.split("train"), corpus.split("dev")
    for indices in groups.values():
        group = [tasks[i] for i in indices]
        callback = None if on_epoch is None else _per_task(group, on_epoch)
        key = group[0].key if len(group) == 1 else f"{group[0].name}-seeds{'-'.join(str(t.seed) for t in group)}"
        results = train_seeds(
            train,
            dev,
            group[0].config,
            [t.seed for t in group],
            checkpoint_path=run.join("checkpoints", f"{key}.pt"),
            resume=resume,
            progress=progress,
            on_epoch=callback,
            device=device,
            workers=workers,
        )
        for index, task, result in zip(indices, group, results, strict=True):
            outcomes[index] = save_seed_outcome(task, result, corpus, run, node=node, workers=workers)
    return [outcomes[i] for i in range(len(tasks))]


def _per_task(
    group: list[SeedTask], on_epoch: Callable[[SeedTask, EpochRecord], None]
) -> Callable[[int, EpochRecord], None]:
    by_seed = {t.seed: t for t in group}
    return lambda seed, record: on_epoch(by_seed[seed], record)


def save_seed_outcome(
    task: SeedTask,
    result: TrainResult,
    corpus: Corpus,
    run: Location,
    *,
    node: str | None = None,
    workers: Workers | None = None,
) -> SeedOutcome:
    """Evaluate a trained seed on the labelled test videos, calibrate its uncertainty on the dev split
    (:func:`affect_core.calibration.calibrate_model`: the variance its predictions carry becomes the label's), then
    write its bundle and result rows under ``run`` (rows last: their presence marks the seed as finished). workers:
    data-parallel workers, each with its shard of the corpus: the test metrics and the dev frames are gathered from
    every worker and the leader alone writes."""
    from affect_core.calibration import calibrate_model
    from affect_core.inference import evaluate_seeds

    bundle_url = run.join("seeds", task.key).url
    test = [v for v in corpus.split("test") if v.labelled]
    if test if workers is None else any(workers.gather(bool(test))):
        result.metrics["test"] = evaluate_seeds(result.model, result.transform, test, workers=workers)[0]
    dev = [v for v in corpus.split("dev") if v.labelled]
    calibration = None
    if dev if workers is None else any(workers.gather(bool(dev))):
        calibration = calibrate_model(result.model, result.transform, dev, workers=workers) or None
    if workers is not None and not workers.leader:
        return SeedOutcome(task, [], bundle_url, float("nan"))
    trained = TrainedModel(task.name, result.model, result.transform, result.config, result.metrics, calibration)
    bundle = ModelBundle([trained], corpus.feature_names, corpus.feature_set, corpus.fps)
    save_bundle(bundle, run.join("seeds", task.key))
    node = node or socket.gethostname()
    rows = [
        {
            "model": result.config.model.model,
            "align": result.config.model.align,
            "dimension": dim,
            "joint": task.name == "joint",
            "seed": task.seed,
            "split": split,
            "ccc": values["ccc"],
            "rmse": values["rmse"],
            "pcc": values["pcc"],
            "mu_frames": result.mu_frames,
            "sigma2": result.sigma2,
            "epochs": result.epochs,
            "train_seconds": result.train_seconds,
            "node": node,
            "name": task.name,
            "rater_lags": json.dumps(result.rater_lags) if result.rater_lags else None,
        }
        for split, per_dim in result.metrics.items()
        for dim, values in per_dim.items()
    ]
    dev_values = [v["ccc"] for v in result.metrics.get("dev", {}).values()]
    dev_ccc = float(np.mean(dev_values)) if dev_values else float("nan")
    rows_path = run.join("seeds", task.key, "rows.json")
    write_bytes_atomic(run.fs, rows_path.path, json.dumps({"rows": rows, "dev_ccc": dev_ccc}).encode())
    return SeedOutcome(task, rows, bundle_url, dev_ccc)


def load_seed_outcome(task: SeedTask, run: Location) -> SeedOutcome | None:
    """The outcome of a seed that finished under ``run`` (its rows file exists), else None."""
    rows_path = run.join("seeds", task.key, "rows.json")
    if not exists(run.fs, rows_path.path):
        return None
    done = json.loads(read_bytes(run.fs, rows_path.path))
    return SeedOutcome(task, done["rows"], run.join("seeds", task.key).url, done["dev_ccc"])


def finish_run(outcomes: list[SeedOutcome], run: Location, *, fps: float) -> dict[str, str]:
    """Write results.parquet, summary.md and the best-seed bundle under ``run``; return their URLs."""
    if not outcomes:
        raise AffectError(f"{run.display()}: no seed finished; nothing to write")
    rows = [row for o in outcomes for row in o.rows]
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(run.fs, run.join("results.parquet").path, buffer.getvalue())
    summary = summary_markdown(rows, fps=fps)
    write_bytes_atomic(run.fs, run.join("summary.md").path, summary.encode())
    best: dict[str, SeedOutcome] = {}
    for o in outcomes:
        current = best.get(o.task.name)
        if current is None or _better(o.dev_ccc, current.dev_ccc):
            best[o.task.name] = o
    models: list[TrainedModel] = []
    first: ModelBundle | None = None
    for name in sorted(best, key=lambda n: ("arousal", "valence", "joint").index(n)):
        seed_bundle = load_bundle(run.join("seeds", best[name].task.key))
        first = first or seed_bundle
        models.extend(seed_bundle.models)
    assert first is not None
    save_bundle(
        ModelBundle(models, first.feature_names, first.feature_set, first.fps),
        run.join("model"),
    )
    return {
        "results": run.join("results.parquet").url,
        "summary": run.join("summary.md").url,
        "model": run.join("model").url,
    }


def _better(candidate: float, incumbent: float) -> bool:
    if not np.isfinite(incumbent):
        return bool(np.isfinite(candidate))
    return bool(np.isfinite(candidate) and candidate > incumbent)


def summary_markdown(rows: list[dict[str, Any]], *, fps: float) -> str:
    """Paper-style tables: per split, CCC / RMSE / PCC as mean (std) over seeds per variant and dimension, then the
    learned lag (Table IV: mu in frames and seconds, sigma^2)."""
    lines = ["# Results", ""]
    variants = sorted({(r["model"], r["align"], r["joint"]) for r in rows})
    dims = [d for d in ("arousal", "valence") if any(r["dimension"] == d for r in rows)]
    splits = [s for s in ("train", "dev", "test") if any(r["split"] == s for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    lines.append(
        f"Mean (std) over {len(seeds)} seed(s): {', '.join(map(str, seeds))}. Metrics per sequence, "
        "averaged over the sequences of a split (AVEC protocol)."
    )
    for split in splits:
        lines += ["", f"## {split} split", ""]
        header = "| variant | " + " | ".join(f"{d} {m}" for d in dims for m in ("CCC", "RMSE", "PCC")) + " |"
        lines += [header, "|" + "---|" * (1 + 3 * len(dims))]
        for model, align, joint in variants:
            cells = []
            for dim in dims:
                sel = [
                    r
                    for r in rows
                    if (r["model"], r["align"], r["joint"]) == (model, align, joint)
                    and r["dimension"] == dim
                    and r["split"] == split
                ]
                for metric in ("ccc", "rmse", "pcc"):
                    cells.append(_mean_std([r[metric] for r in sel]))
            lines.append(f"| {variant_label(model, align, joint)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Learned lag",
        "",
        "| variant | model | mu (frames) | mu (s) | sigma^2 (frames^2) |",
        "|---|---|---|---|---|",
    ]
    for model, align, joint in variants:
        for name in sorted({r["name"] for r in rows if (r["model"], r["align"], r["joint"]) == (model, align, joint)}):
            by_seed = {
                r["seed"]: r
                for r in rows
                if (r["model"], r["align"], r["joint"], r["name"]) == (model, align, joint, name)
            }
            mus = [r["mu_frames"] for r in by_seed.values()]
            lines.append(
                f"| {variant_label(model, align, joint)} | {name} | {_mean_std(mus)} | "
                f"{_mean_std([m / fps for m in mus])} | {_mean_std([r['sigma2'] for r in by_seed.values()])} |"
            )
    return "\n".join(lines + _rater_lag_lines(rows, variants, fps)) + "\n"


def _rater_lag_lines(rows: list[dict[str, Any]], variants: list[tuple[str, str, bool]], fps: float) -> list[str]:
    """The table of every rater's learned lag (per-rater targets): mean (std) over seeds; none without them."""
    lines: list[str] = []
    for model, align, joint in variants:
        for name in sorted({r["name"] for r in rows if (r["model"], r["align"], r["joint"]) == (model, align, joint)}):
            by_seed = {
                r["seed"]: json.loads(r["rater_lags"])
                for r in rows
                if (r["model"], r["align"], r["joint"], r["name"]) == (model, align, joint, name)
                and r.get("rater_lags")
            }
            for rater in sorted({rater for lags in by_seed.values() for rater in lags}):
                mus = [lags[rater][0] for lags in by_seed.values() if rater in lags]
                spreads = [lags[rater][1] for lags in by_seed.values() if rater in lags]
                lines.append(
                    f"| {variant_label(model, align, joint)} | {name} | {rater} | {_mean_std(mus)} | "
                    f"{_mean_std([m / fps for m in mus])} | {_mean_std(spreads)} |"
                )
    if not lines:
        return []
    header = [
        "",
        "## Learned lag per rater",
        "",
        "Each rater's own Gaussian alignment (trained with `--targets raters`), mean (std) over seeds.",
        "",
        "| variant | model | rater | mu (frames) | mu (s) | sigma^2 (frames^2) |",
        "|---|---|---|---|---|---|",
    ]
    return header + lines


def variant_label(model: str, align: str, joint: bool) -> str:
    """The paper's naming: LSTM, LSTM-KF, LSTM-EKF with -MA / -AA, and * for the joint valence+arousal variant."""
    name = {"baseline": "LSTM", "lstm-kf": "LSTM-KF", "lstm-ekf": "LSTM-EKF"}[model]
    name += {"none": "", "manual": "-MA", "adaptive": "-AA"}[align]
    return name + ("*" if joint else "")


def _mean_std(values: list[float]) -> str:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return "n/a"
    return f"{arr.mean():.3f} ({arr.std():.3f})"


def read_results(run_url: Where, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """A run's results.parquet (``run_url`` resolved here, or a Location resolved before)."""
    run = resolve(run_url, storage_options)
    try:
        return pq.read_table(io.BytesIO(read_bytes(run.fs, run.join("results.parquet").path)))
    except FileNotFoundError:
        raise AffectError(f"{run.display('results.parquet')}: no results here; run `affect train` first") from None


def train_run(
    corpus: Corpus,
    run_url: Where,
    config: RunConfig,
    *,
    dimension: str,
    seeds: int,
    resume: bool = False,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    seeds_per_worker: int = 1,
    device: str | None = None,
) -> dict[str, str]:
    """Train every seed in this process and write the run's outputs: in groups of ``seeds_per_worker`` seeds of the
    same model, each group trained together (same results, less wall time). ``run_url`` is resolved here, once,
    with ``storage_options`` (or is a Location resolved before)."""
    from tqdm.auto import tqdm

    run = resolve(run_url, storage_options)
    tasks = plan_seed_tasks(config, dimension, range(seeds))
    outcomes = []
    groups = group_seed_tasks(tasks, seeds_per_worker)
    for group in tqdm(groups, desc="seeds" if seeds_per_worker == 1 else "seed groups", disable=not progress):
        outcomes += run_seeds(group, corpus, run, resume=resume, progress=progress, device=device)
    return finish_run(outcomes, run, fps=corpus.fps)
