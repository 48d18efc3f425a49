"""Bad input: every malformed corpus is refused with one AffectError naming the file and the problem, before
anything
is written; the destination keeps exactly its earlier versions. A fuzz test feeds the parsers random and
mutated bytes."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affect_core.data import readers, tables
from affect_core.data.arff_format import read_arff
from affect_core.data.dataset import ingest, list_versions, read_corpus
from affect_core.data.tables import read_csv_table, read_parquet_table
from affect_core.errors import AffectError
from affect_core.synth import SynthConfig, WriteOptions, write_corpus

DATA = Path(__file__).parent / "data"
APPEARANCE = "features_video_appearance"
GEOMETRIC = "features_video_geometric"
AROUSAL = "ratings_gold_standard/arousal"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _data_start(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1


def edit_row(relative: str, row: int, new: Callable[[str], str]) -> Callable[[Path], None]:
    """Replace data row ``row`` (0-based, after @data or the CSV header) of a file."""

    def mutate(root: Path) -> None:
        path = root / relative
        lines = _lines(path)
        start = _data_start(lines) if path.suffix == ".arff" else 1
        lines[start + row] = new(lines[start + row])
        _write(path, lines)

    return mutate


def replace_text(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    return mutate


def drop_row(relative: str, row: int) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        lines = _lines(path)
        start = _data_start(lines) if path.suffix == ".arff" else 1
        del lines[start + row]
        _write(path, lines)

    return mutate


def write_bytes(relative: str, data: bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)

    return mutate


def remove(relative: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        target = root / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return mutate


def rename(relative: str, new_name: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / relative).rename((root / relative).parent / new_name)

    return mutate


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for step in steps:
            step(root)

    return mutate


def set_time(value: str) -> Callable[[str], str]:
    def new(line: str) -> str:
        parts = line.split(",")
        parts[1] = value
        return ",".join(parts)

    return new


def set_csv_time(value: str) -> Callable[[str], str]:
    return lambda line: ",".join([value, *line.split(",")[1:]])


def set_value(index: int, value: str) -> Callable[[str], str]:
    def new(line: str) -> str:
        parts = line.split(",")
        parts[index] = value
        return ",".join(parts)

    return new


def _csv_parquet_features(root: Path) -> None:
    """Convert the csv fixture in place to a combined-table parquet layout (used by parquet cases)."""
    import pyarrow.csv as pacsv

    partition = pacsv.read_csv(root / "partition.csv")
    pq.write_table(partition, root / "partition.parquet")
    feats, labels = [], []
    for video_id in partition.column("video_id").to_pylist():
        table = pacsv.read_csv(root / "features" / f"{video_id}.csv")
        feats.append(table.add_column(0, "video_id", pa.array([video_id] * table.num_rows)))
        label_path = root / "labels" / f"{video_id}.csv"
        if label_path.exists():
            label = pacsv.read_csv(label_path)
            labels.append(label.add_column(0, "video_id", pa.array([video_id] * label.num_rows)))
    pq.write_table(pa.concat_tables(feats), root / "features.parquet")
    pq.write_table(pa.concat_tables(labels), root / "labels.parquet")
    for name in ("features", "labels", "partition.csv"):
        remove(name)(root)


def parquet_edit(name: str, change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        _csv_parquet_features(root)
        pq.write_table(change(pq.read_table(root / name)), root / name)

    return mutate


def _set_cell(table: pa.Table, column: str, row: int, value: object, kind: pa.DataType | None = None) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.column_names.index(column)
    return table.set_column(index, pa.field(column, kind or table.schema.field(column).type), [values])


@dataclass
class Case:
    id: str
    layout: str
    mutate: Callable[[Path], None]
    file: str  # must appear in the message (the file, or the folder for a missing file)
    pattern: str  # regex the message must match (the problem and the row/attribute)


TRAIN_APP = f"{APPEARANCE}/train_1.arff"
DEV_APP = f"{APPEARANCE}/dev_1.arff"
TRAIN_GOLD = f"{AROUSAL}/train_1.arff"

CASES = [
    # --- avec2016 (ARFF)
    Case(
        "arff-bad-header",
        "avec2016",
        replace_text(TRAIN_APP, "app_eyes numeric", "app_eyes nonsense"),
        "train_1.arff",
        r"unparseable ARFF header",
    ),
    Case(
        "arff-no-data-section",
        "avec2016",
        replace_text(TRAIN_APP, "@data", "@dat"),
        "train_1.arff",
        r"no '@data' line",
    ),
    Case("arff-empty-file", "avec2016", write_bytes(DEV_APP, b""), "dev_1.arff", r"empty file"),
    Case(
        "arff-header-only",
        "avec2016",
        lambda root: _write(root / DEV_APP, _lines(root / DEV_APP)[: _data_start(_lines(root / DEV_APP))]),
        "dev_1.arff",
        r"no data rows",
    ),
    Case(
        "arff-missing-attribute",
        "avec2016",
        both(
            replace_text(DEV_APP, "@attribute app_brow numeric\n", ""),
            *[edit_row(DEV_APP, r, lambda line: line.rsplit(",", 1)[0]) for r in range(6)],
        ),
        "dev_1.arff",
        r"feature dimension 2 differs from 3 .*missing attribute 'app_brow'",
    ),
    Case(
        "arff-extra-attribute",
        "avec2016",
        both(
            replace_text(
                DEV_APP,
                "@attribute app_brow numeric\n",
                "@attribute app_brow numeric\n@attribute extra numeric\n",
            ),
            *[edit_row(DEV_APP, r, lambda line: line + ",0.5") for r in range(6)],
        ),
        "dev_1.arff",
        r"extra attribute 'extra'",
    ),
    Case(
        "arff-renamed-attribute",
        "avec2016",
        replace_text(DEV_APP, "app_eyes", "app_nose"),
        "dev_1.arff",
        r"missing attribute 'app_eyes'.*extra attribute 'app_nose'",
    ),
    Case(
        "arff-non-numeric-value",
        "avec2016",
        edit_row(TRAIN_APP, 2, set_value(3, "abc")),
        "train_1.arff",
        r"line 12, attribute 'app_eyes': value 'abc' is not a number",
    ),
    Case(
        "arff-string-feature",
        "avec2016",
        replace_text(TRAIN_APP, "app_eyes numeric", "app_eyes string"),
        "train_1.arff",
        r"attribute 'app_eyes' is STRING; expected numeric",
    ),
    Case(
        "arff-truncated-file",
        "avec2016",
        lambda root: (root / DEV_APP).write_bytes((root / DEV_APP).read_bytes()[:-9]),
        "dev_1.arff",
        r"line 15: \d values, expected 5 .*truncated",
    ),
    Case(
        "arff-utf16",
        "avec2016",
        lambda root: (root / TRAIN_APP).write_bytes((root / TRAIN_APP).read_text().encode("utf-16")),
        "train_1.arff",
        r"binary or UTF-16",
    ),
    Case(
        "arff-latin1-bytes",
        "avec2016",
        replace_text(TRAIN_APP, "@relation features_video_appearance", "@relation caf\xe9"),
        "train_1.arff",
        r".",
    ),  # valid UTF-8 (é): accepted header; replaced below by raw bytes
    Case(
        "arff-infinite-feature",
        "avec2016",
        edit_row(TRAIN_APP, 1, set_value(2, "inf")),
        "train_1.arff",
        r"line 11, attribute 'app_mouth': inf is not finite",
    ),
    Case(
        "arff-duplicated-frametime",
        "avec2016",
        edit_row(TRAIN_APP, 2, set_time("0.04")),
        "train_1.arff",
        r"line 12, attribute 'frameTime': duplicated",
    ),
    Case(
        "arff-decreasing-frametime",
        "avec2016",
        edit_row(TRAIN_APP, 2, set_time("0.01")),
        "train_1.arff",
        r"line 12, attribute 'frameTime': decreasing",
    ),
    Case(
        "arff-gap-in-frametime",
        "avec2016",
        drop_row(TRAIN_APP, 2),
        "train_1.arff",
        r"line 12: gap in the time axis: frameTime jumps from 0.04 to 0.12",
    ),
    Case(
        "arff-other-frame-rate",
        "avec2016",
        both(
            *[
                edit_row(f"{d}/dev_1.arff", r, set_time(f"{r * 0.02:.2f}"))
                for d in (APPEARANCE, GEOMETRIC, AROUSAL, "ratings_gold_standard/valence")
                for r in range(6)
            ]
        ),
        "dev_1.arff",
        r"frame rate 50 fps .* differs from the corpus frame rate 25 fps",
    ),
    Case(
        "arff-label-above-one",
        "avec2016",
        edit_row(TRAIN_GOLD, 4, set_value(2, "1.5")),
        "train_1.arff",
        r"line 12, attribute 'GoldStandard': 1.5 is outside \[-1, 1\]",
    ),
    Case(
        "arff-label-missing",
        "avec2016",
        edit_row(TRAIN_GOLD, 0, set_value(2, "?")),
        "train_1.arff",
        r"line 8, attribute 'GoldStandard': missing",
    ),
    Case(
        "arff-label-nan",
        "avec2016",
        edit_row(TRAIN_GOLD, 1, set_value(2, "nan")),
        "train_1.arff",
        r"attribute 'GoldStandard': missing \(NaN",
    ),
    Case(
        "arff-label-infinite",
        "avec2016",
        edit_row(TRAIN_GOLD, 1, set_value(2, "-inf")),
        "train_1.arff",
        r"attribute 'GoldStandard': infinite",
    ),
    Case(
        "arff-label-rows-differ",
        "avec2016",
        drop_row(TRAIN_GOLD, 5),
        "train_1.arff",
        r"5 labels rows but 6 feature rows",
    ),
    Case(
        "arff-label-times-shifted",
        "avec2016",
        both(*[edit_row(TRAIN_GOLD, r, set_time(f"{(r + 1) * 0.04:.2f}")) for r in range(6)]),
        "train_1.arff",
        r"line 8: frameTime 0.04 disagrees with 0 in .*train_1.arff",
    ),
    Case(
        "arff-label-extra-attribute",
        "avec2016",
        both(
            replace_text(TRAIN_GOLD, "GoldStandard numeric", "GoldStandard numeric\n@attribute rater numeric"),
            *[edit_row(TRAIN_GOLD, r, lambda line: line + ",1") for r in range(6)],
        ),
        "train_1.arff",
        r"unexpected attribute 'rater'",
    ),
    Case(
        "arff-labels-without-features",
        "avec2016",
        lambda root: shutil.copy(root / TRAIN_GOLD, root / AROUSAL / "train_9.arff"),
        "train_9.arff",
        r"labels for video 'train_9' but no features file",
    ),
    Case(
        "arff-unknown-split",
        "avec2016",
        both(
            rename(f"{APPEARANCE}/test_1.arff", "holdout_1.arff"),
            rename(f"{GEOMETRIC}/test_1.arff", "holdout_1.arff"),
        ),
        "holdout_1.arff",
        r"unknown split 'holdout'",
    ),
    Case(
        "arff-video-missing-in-one-set",
        "avec2016",
        remove(f"{GEOMETRIC}/test_1.arff"),
        "test_1.arff",
        r"video 'test_1' has no file in feature set 'geometric'",
    ),
    Case(
        "avec-empty-corpus",
        "avec2016",
        both(*[remove(f"{d}/{v}.arff") for d in (APPEARANCE, GEOMETRIC) for v in ("train_1", "dev_1", "test_1")]),
        APPEARANCE,
        r"no \.arff files",
    ),
    Case(
        "avec-no-feature-folder",
        "avec2016",
        both(remove(APPEARANCE), remove(GEOMETRIC)),
        "src",
        r"no features_\* folder",
    ),
    # --- csv
    Case(
        "csv-id-escapes-root",
        "csv",
        replace_text("partition.csv", "test_1,test", "../x,test"),
        "partition.csv",
        r"line 4: video id '\.\./x' would escape the dataset root",
    ),
    Case(
        "csv-id-absolute-path",
        "csv",
        replace_text("partition.csv", "test_1,test", "/etc/passwd,test"),
        "partition.csv",
        r"video id '/etc/passwd' would escape the dataset root",
    ),
    Case(
        "csv-duplicate-id-across-splits",
        "csv",
        replace_text("partition.csv", "dev_1,dev", "train_1,dev"),
        "partition.csv",
        r"line 3: duplicate video id 'train_1' \(already in split 'train' at line 2\)",
    ),
    Case(
        "csv-unknown-split",
        "csv",
        replace_text("partition.csv", "dev_1,dev", "dev_1,holdout"),
        "partition.csv",
        r"line 3: unknown split 'holdout'; expected one of train, dev, test",
    ),
    Case(
        "csv-missing-split",
        "csv",
        replace_text("partition.csv", "dev_1,dev", "dev_1,"),
        "partition.csv",
        r"line 3: missing split for video 'dev_1'",
    ),
    Case(
        "csv-partition-missing-column",
        "csv",
        write_bytes("partition.csv", b"video_id\ntrain_1\n"),
        "partition.csv",
        r"missing attribute 'split'",
    ),
    Case("csv-partition-missing", "csv", remove("partition.csv"), "partition.csv", r"file not found"),
    Case(
        "csv-empty-partition",
        "csv",
        write_bytes("partition.csv", b"video_id,split\n"),
        "partition.csv",
        r"no data rows",
    ),
    Case(
        "csv-video-not-in-partition",
        "csv",
        lambda root: shutil.copy(root / "features/dev_1.csv", root / "features/dev_2.csv"),
        "dev_2.csv",
        r"video 'dev_2' is not listed in .*partition.csv",
    ),
    Case(
        "csv-video-without-features",
        "csv",
        remove("features/dev_1.csv"),
        "features",
        r"no features file for video 'dev_1'",
    ),
    Case(
        "csv-non-numeric",
        "csv",
        edit_row("features/dev_1.csv", 3, set_value(4, "high")),
        "dev_1.csv",
        r"line 5, column 'geo_x': value 'high' is not a number",
    ),
    Case(
        "csv-too-few-values",
        "csv",
        edit_row("features/dev_1.csv", 3, lambda line: line.rsplit(",", 1)[0]),
        "dev_1.csv",
        r"line 5: 5 values, expected 6",
    ),
    Case(
        "csv-unbalanced-quote",
        "csv",
        edit_row("features/dev_1.csv", 1, set_value(2, '"0.1')),
        "dev_1.csv",
        r"dev_1.csv: (line \d+: )?unparseable",
    ),
    Case(
        "csv-header-only",
        "csv",
        lambda root: _write(root / "features/test_1.csv", _lines(root / "features/test_1.csv")[:1]),
        "test_1.csv",
        r"no data rows",
    ),
    Case("csv-empty-features-file", "csv", write_bytes("features/test_1.csv", b""), "test_1.csv", r"empty file"),
    Case(
        "csv-feature-dimension-differs",
        "csv",
        lambda root: _write(
            root / "features/test_1.csv",
            [line + (",extra" if i == 0 else ",0.5") for i, line in enumerate(_lines(root / "features/test_1.csv"))],
        ),
        "test_1.csv",
        r"feature dimension 6 differs from 5 .*extra attribute 'extra'",
    ),
    Case(
        "csv-labels-missing-column",
        "csv",
        lambda root: _write(
            root / "labels/dev_1.csv", [line.rsplit(",", 1)[0] for line in _lines(root / "labels/dev_1.csv")]
        ),
        "dev_1.csv",
        r"missing attribute 'valence'",
    ),
    Case(
        "csv-label-partly-nan",
        "csv",
        edit_row("labels/dev_1.csv", 2, set_value(1, "NaN")),
        "dev_1.csv",
        r"line 4, attribute 'arousal': missing",
    ),
    Case(
        "csv-labels-without-features",
        "csv",
        lambda root: shutil.copy(root / "labels/dev_1.csv", root / "labels/dev_7.csv"),
        "dev_7.csv",
        r"labels for video 'dev_7' but no features file",
    ),
    Case(
        "csv-absurd-frame-number",
        "csv",
        lambda root: _write(
            root / "features/dev_1.csv",
            ["frame" + _lines(root / "features/dev_1.csv")[0][len("frameTime") :]]
            + [
                f"{10**12 if i == 5 else i}," + line.split(",", 1)[1]
                for i, line in enumerate(_lines(root / "features/dev_1.csv")[1:])
            ],
        ),
        "dev_1.csv",
        r"line 7, attribute 'frame': .* is not a frame number",
    ),
    Case(
        "csv-gap-claims-billion-frames",
        "csv",
        edit_row("features/dev_1.csv", 5, set_csv_time("40000000")),
        "dev_1.csv",
        r"line 7: gap in the time axis",
    ),
    Case(
        "csv-wrong-encoding",
        "csv",
        lambda root: (root / "features/dev_1.csv").write_bytes(
            (root / "features/dev_1.csv").read_bytes().replace(b"0.04,", b"0.04\xff,", 1)
        ),
        "dev_1.csv",
        r"line 3: not UTF-8|line 3, column 'frameTime'",
    ),
    # --- parquet
    Case(
        "parquet-truncated",
        "parquet",
        lambda root: (
            _csv_parquet_features(root),
            (root / "features.parquet").write_bytes((root / "features.parquet").read_bytes()[:200]),
        ),
        "features.parquet",
        r"unparseable Parquet file",
    ),
    Case(
        "parquet-string-feature",
        "parquet",
        parquet_edit(
            "features.parquet",
            lambda t: t.set_column(
                2, pa.field("app_mouth", pa.string()), [[str(v) for v in t.column("app_mouth").to_pylist()]]
            ),
        ),
        "features.parquet",
        r"column 'app_mouth' has type string; expected a numeric column",
    ),
    Case(
        "parquet-label-above-one",
        "parquet",
        parquet_edit("labels.parquet", lambda t: _set_cell(t, "valence", 3, 2.5)),
        "labels.parquet",
        r"row 4, attribute 'valence': 2.5 is outside",
    ),
    Case(
        "parquet-duplicate-time",
        "parquet",
        parquet_edit("features.parquet", lambda t: _set_cell(t, "frameTime", 2, 0.04)),
        "features.parquet",
        r"row 3, attribute 'frameTime': duplicated",
    ),
    Case(
        "parquet-id-escapes-root",
        "parquet",
        parquet_edit("partition.parquet", lambda t: _set_cell(t, "video_id", 0, "a/../../b")),
        "partition.parquet",
        r"row 1: video id 'a/../../b' would escape",
    ),
    Case(
        "parquet-empty-file",
        "parquet",
        lambda root: (_csv_parquet_features(root), (root / "labels.parquet").write_bytes(b"")),
        "labels.parquet",
        r"empty file",
    ),
]
# A header byte that is not UTF-8 (latin-1 e-acute) instead of the valid UTF-8 placeholder above.
CASES[[c.id for c in CASES].index("arff-latin1-bytes")] = Case(
    "arff-latin1-bytes",
    "avec2016",
    lambda root: (root / TRAIN_APP).write_bytes(
        (root / TRAIN_APP).read_bytes().replace(b"@relation ", b"@relation caf\xe9", 1)
    ),
    "train_1.arff",
    r"header is not UTF-8 text",
)


# --- layouts written by the generator: the AVEC2016 release, openface (OpenFace CSV; Aff-Wild2 labels), muse
GENERATED = {
    "avec2016-release": (
        "avec2016",
        SynthConfig(videos_per_split=1, frames=30, appearance_dim=3, geometric_dim=2, lag_s=0.2, raters=2),
        WriteOptions(),
    ),
    "openface": (
        "openface",
        SynthConfig(videos_per_split=1, frames=30, appearance_dim=3, geometric_dim=2, fps=30.0, lag_s=0.2),
        WriteOptions(),
    ),
    "openface-affwild": (
        "openface",
        SynthConfig(videos_per_split=1, frames=30, appearance_dim=3, geometric_dim=2, fps=30.0, lag_s=0.2),
        WriteOptions(affwild2=True),
    ),
    "muse": (
        "muse",
        SynthConfig(videos_per_split=1, frames=30, appearance_dim=3, geometric_dim=2, fps=4.0, lag_s=0.0),
        WriteOptions(),
    ),
}


def make_source(layout: str, dest: Path) -> str:
    """A valid corpus of ``layout`` at ``dest``; returns the layout name to ingest it with."""
    if layout in GENERATED:
        read_as, config, options = GENERATED[layout]
        write_corpus(config, dest, read_as, options=options)
        return read_as
    shutil.copytree(DATA / ("csv" if layout == "parquet" else layout), dest)  # parquet cases convert it themselves
    return layout


def rewrite(relative: str, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Replace the lines of a file by ``change(lines)``."""

    def mutate(root: Path) -> None:
        _write(root / relative, change(_lines(root / relative)))

    return mutate


def append(relative: str, line: str) -> Callable[[Path], None]:
    return rewrite(relative, lambda lines: [*lines, line])


def copy_file(relative: str, new_relative: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / new_relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, root / new_relative)

    return mutate


def _mixed_rate_times(lines: list[str]) -> list[str]:
    """An OpenFace file whose first 15 frames are 25 fps and the rest faster (the same 30 fps on average)."""
    out = [lines[0]]
    total = (len(lines) - 2) / 30.0
    for i, line in enumerate(lines[1:]):
        t = 0.04 * i if i <= 15 else 0.6 + (i - 15) * (total - 0.6) / (len(lines) - 2 - 15)
        parts = line.split(", ")
        parts[2] = f"{t:.3f}"
        out.append(", ".join(parts))
    return out


def _shift_times(column: int, offset: float, separator: str = ",") -> Callable[[list[str]], list[str]]:
    def change(lines: list[str]) -> list[str]:
        out = [lines[0]]
        for line in lines[1:]:
            parts = line.split(separator)
            parts[column] = f"{float(parts[column]) + offset:g}"
            out.append(separator.join(parts))
        return out

    return change


OF = "features/train_1.csv"
OF_LABELS = "labels/train_1.csv"
AW = "labels/train_1.txt"
MUSE_APP = "feature_segments/appearance/train_1.csv"
MUSE_GEO = "feature_segments/geometric/train_1.csv"
MUSE_AROUSAL = "label_segments/arousal/train_1.csv"
MUSE_PARTITION = "metadata/partition.csv"
REL_APP_V = "features_video_appearance/valence/train_1.arff"
REL_RATINGS = "ratings_individual_centred/arousal/train_1.csv"

CASES += [
    # --- avec2016 as released
    Case(
        "release-instance-name-mismatch",
        "avec2016-release",
        edit_row(REL_APP_V, 4, lambda line: "train_2" + line[len("train_1") :]),
        "valence/train_1.arff",
        r"line 14, attribute 'Instance_name': 'train_2' is not the file's video id; expected 'train_1'",
    ),
    Case(
        "release-no-valence-folder",
        "avec2016-release",
        remove("features_video_geometric/valence"),
        "features_video_geometric",
        r"has arousal/ but no valence/ folder",
    ),
    Case(
        "release-flat-folder-among-per-dimension",
        "avec2016-release",
        both(
            remove("features_video_geometric/valence"),
            lambda root: [
                p.rename(p.parent.parent / p.name) for p in (root / "features_video_geometric" / "arousal").iterdir()
            ],
            remove("features_video_geometric/arousal"),
        ),
        "features_video_geometric",
        r"\*.arff directly in the folder while features_video_appearance has arousal/ and valence/",
    ),
    Case(
        "release-dimension-file-missing",
        "avec2016-release",
        remove("features_video_appearance/valence/dev_1.arff"),
        "dev_1.arff",
        r"video 'dev_1' has no file in feature set 'valence/appearance'",
    ),
    Case(
        "release-dimension-rows-disagree",
        "avec2016-release",
        drop_row(REL_APP_V, 29),
        "valence/train_1.arff",
        r"29 features rows but 30 feature rows",
    ),
    Case(
        "release-ratings-not-semicolon",
        "avec2016-release",
        rewrite(REL_RATINGS, lambda lines: [line.replace(";", ",") for line in lines]),
        "ratings_individual_centred/arousal/train_1.csv",
        r"line 1: no ';' in the header",
    ),
    Case(
        "release-ratings-for-unknown-video",
        "avec2016-release",
        copy_file(REL_RATINGS, "ratings_individual_centred/arousal/train_7.csv"),
        "train_7.csv",
        r"ratings for video 'train_7' but no features file",
    ),
    Case(
        "release-ratings-not-a-number",
        "avec2016-release",
        rewrite(REL_RATINGS, lambda lines: [*lines[:3], lines[3].rsplit(";", 1)[0] + ";abc", *lines[4:]]),
        "ratings_individual_centred/arousal/train_1.csv",
        r"line 4, column 'R2': value 'abc' is not a number",
    ),
    Case(
        "release-ratings-infinite",
        "avec2016-release",
        rewrite(REL_RATINGS, lambda lines: [*lines[:5], lines[5].rsplit(";", 1)[0] + ";inf", *lines[6:]]),
        "ratings_individual_centred/arousal/train_1.csv",
        r"line 6, attribute 'R2': infinite rating",
    ),
    # --- openface (OpenFace 2.x CSV, Aff-Wild2 VA labels)
    Case(
        "openface-wrong-separator",
        "openface",
        rewrite(OF, lambda lines: [line.replace(", ", ";") for line in lines]),
        "features/train_1.csv",
        r"line 1: no ',' between column names \(';' found\)",
    ),
    Case(
        "openface-no-success-column",
        "openface",
        replace_text(OF, "success", "succes"),
        "features/train_1.csv",
        r"line 1: no 'success' column; expected an OpenFace 2.x FeatureExtraction CSV",
    ),
    Case(
        "openface-success-not-binary",
        "openface",
        edit_row(OF, 2, set_value(4, " 2")),
        "features/train_1.csv",
        r"line 4, column 'success': 2; expected 0 or 1",
    ),
    Case(
        "openface-confidence-out-of-range",
        "openface",
        edit_row(OF, 5, set_value(3, " 1.5")),
        "features/train_1.csv",
        r"line 7, column 'confidence': 1.5; expected a number in \[0, 1\]",
    ),
    Case(
        "openface-frame-gap",
        "openface",
        drop_row(OF, 10),
        "features/train_1.csv",
        r"line 12: gap in the time axis",
    ),
    Case(
        "openface-mixed-frame-rates",
        "openface",
        rewrite(OF, _mixed_rate_times),
        "features/train_1.csv",
        r"line \d+: timestamp .* s is not frame \d+'s time .* expected one frame rate within a video",
    ),
    Case(
        "openface-labels-outside-the-frames",
        "openface",
        rewrite(OF_LABELS, _shift_times(0, 100.0)),
        "labels/train_1.csv",
        r"no arousal label falls on a feature frame \(labels 100 s to 100.967 s, features 0 s to 0.967 s\)",
    ),
    Case(
        "openface-mixed-tools",
        "openface",
        write_bytes(OF, b"frame,FaceScore,AU01\n0,0.9,0.1\n1,0.9,0.2\n"),
        "features/train_1.csv",
        r"a py-feat CSV among openface CSVs",
    ),
    Case(
        "openface-partition-video-without-features",
        "openface",
        append("partition.csv", "train_9,train"),
        "partition.csv",
        r"video 'train_9' has no features file",
    ),
    Case(
        "openface-duplicate-id",
        "openface",
        append("partition.csv", "train_1,dev"),
        "partition.csv",
        r"line 5: duplicate video id 'train_1'",
    ),
    Case(
        "openface-features-not-in-partition",
        "openface",
        copy_file(OF, "features/train_7.csv"),
        "train_7.csv",
        r"video 'train_7' is not listed in",
    ),
    Case(
        "affwild-lines-not-matching-the-frames",
        "openface-affwild",
        drop_row(AW, 3),
        "labels/train_1.txt",
        r"29 label lines but the features have 30 frames \(frame 1 to 30\)",
    ),
    Case(
        "affwild-only-unannotated",
        "openface-affwild",
        rewrite(AW, lambda lines: [lines[0]] + ["-5,-5"] * (len(lines) - 1)),
        "labels/train_1.txt",
        r"every line is -5 \(not annotated\)",
    ),
    Case(
        "affwild-header",
        "openface-affwild",
        replace_text(AW, "valence,arousal", "arousal,valence"),
        "labels/train_1.txt",
        r"line 1: header 'arousal,valence'; expected 'valence,arousal'",
    ),
    Case(
        "affwild-label-out-of-range",
        "openface-affwild",
        edit_row(AW, 2, lambda line: "1.5," + line.split(",")[1]),
        "labels/train_1.txt",
        r"line 4, attribute 'valence': 1.5 is outside \[-1, 1\]",
    ),
    Case(
        "affwild-and-csv-labels",
        "openface-affwild",
        write_bytes(OF_LABELS, b"frameTime,arousal,valence\n0.0,0.1,0.1\n"),
        "labels/train_1.txt",
        r"labels for video 'train_1' also in .*labels/train_1.csv",
    ),
    # --- muse
    Case(
        "muse-no-partition",
        "muse",
        remove(MUSE_PARTITION),
        "metadata/partition.csv",
        r"file not found; expected the partition table \(columns Id, Partition\)",
    ),
    Case(
        "muse-partition-without-id",
        "muse",
        replace_text(MUSE_PARTITION, "Id,", "Video,"),
        "metadata/partition.csv",
        r"missing column 'Id'",
    ),
    Case(
        "muse-unknown-partition",
        "muse",
        replace_text(MUSE_PARTITION, "devel", "validation"),
        "metadata/partition.csv",
        r"line 3: unknown partition 'validation'",
    ),
    Case(
        "muse-duplicate-id",
        "muse",
        append(MUSE_PARTITION, "train_1,devel"),
        "metadata/partition.csv",
        r"line 5: duplicate Id 'train_1'",
    ),
    Case(
        "muse-id-without-features",
        "muse",
        append(MUSE_PARTITION, "99,train"),
        "metadata/partition.csv",
        r"video '99' has no features in feature_segments/appearance",
    ),
    Case(
        "muse-features-without-id",
        "muse",
        copy_file(MUSE_APP, "feature_segments/appearance/train_5.csv"),
        "train_5.csv",
        r"video 'train_5' is not listed in metadata/partition.csv",
    ),
    Case(
        "muse-no-timestamp",
        "muse",
        replace_text(MUSE_APP, "timestamp,", "time,"),
        "feature_segments/appearance/train_1.csv",
        r"line 1: missing column 'timestamp'",
    ),
    Case(
        "muse-no-segment-id",
        "muse",
        replace_text(MUSE_GEO, "segment_id,", "segment,"),
        "feature_segments/geometric/train_1.csv",
        r"line 1: missing column 'segment_id'",
    ),
    Case(
        "muse-label-without-value",
        "muse",
        replace_text(MUSE_AROUSAL, ",value,", ",arousal,"),
        "label_segments/arousal/train_1.csv",
        r"line 1: missing column 'value'",
    ),
    Case(
        "muse-label-out-of-range",
        "muse",
        edit_row(MUSE_AROUSAL, 3, set_value(1, "1.5")),
        "label_segments/arousal/train_1.csv",
        r"line 5, attribute 'value': 1.5 is outside \[-1, 1\]",
    ),
    Case(
        "muse-timestamps-decreasing",
        "muse",
        edit_row(MUSE_APP, 6, set_value(0, "1")),
        "feature_segments/appearance/train_1.csv",
        r"line 8, attribute 'frameTime': decreasing frameTime 0.001 after 1.25",
    ),
    Case(
        "muse-feature-sets-disagree",
        "muse",
        rewrite(MUSE_GEO, _shift_times(0, 250.0)),
        "feature_segments/geometric/train_1.csv",
        r"line 2: frameTime 0.25 disagrees with 0 in .*appearance/train_1.csv",
    ),
    Case(
        "muse-gap",
        "muse",
        drop_row(MUSE_APP, 8),
        "feature_segments/appearance/train_1.csv",
        r"line 10: gap in the time axis: time jumps from 1.75 to 2.25 s",
    ),
    Case(
        "muse-labels-outside-the-features",
        "muse",
        rewrite(MUSE_AROUSAL, _shift_times(0, 1e6)),
        "label_segments/arousal/train_1.csv",
        r"no arousal label falls on a feature frame",
    ),
]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def existing_dataset(tmp_path):
    """A destination that already holds one version of the valid fixture (of each layout, lazily)."""
    made: dict[str, tuple[Path, str]] = {}

    def make(layout: str) -> tuple[Path, str]:
        if layout not in made:
            source = tmp_path / f"valid_{layout}"
            read_as = make_source(layout, source)
            if layout == "parquet":
                _csv_parquet_features(source)
            target = tmp_path / f"dataset_{layout}"
            result = ingest(str(source), str(target), layout=read_as, progress=False)
            made[layout] = (target, result.version)
        return made[layout]

    return make


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_nothing_becomes_visible(case: Case, tmp_path, existing_dataset):
    target, version = existing_dataset(case.layout)
    before = _snapshot(target)
    source = tmp_path / "src"
    read_as = make_source(case.layout, source)
    case.mutate(source)
    with pytest.raises(AffectError) as error:
        ingest(str(source), str(target), layout=read_as, progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert case.file in message, message
    assert __import__("re").search(case.pattern, message), message
    assert _snapshot(target) == before
    assert list_versions(str(target)) == [version]
    assert read_corpus(str(target)).videos


def test_cases_are_distinct_and_many():
    assert len({c.id for c in CASES}) == len(CASES) >= 50
    for family in ("release-", "openface-", "affwild-", "muse-"):
        assert sum(c.id.startswith(family) for c in CASES) >= (5 if family == "affwild-" else 8), family


def test_unknown_layout_and_feature_set_and_bad_destinations(tmp_path):
    with pytest.raises(AffectError, match=r"layout 'arff': unknown input layout"):
        ingest(str(DATA / "csv"), str(tmp_path / "d"), layout="arff", progress=False)
    with pytest.raises(AffectError, match=r"unknown feature set 'geometric'; available: features"):
        ingest(str(DATA / "csv"), str(tmp_path / "d"), layout="csv", feature_set="geometric", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AffectError, match=r"file: exists and is a file"):
        ingest(str(DATA / "csv"), str(tmp_path / "file"), layout="csv", progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(AffectError, match=r"notes: directory holds 'todo.txt' and is not an affect dataset"):
        ingest(str(DATA / "csv"), str(tmp_path / "notes"), layout="csv", progress=False)
    assert os.listdir(tmp_path / "notes") == ["todo.txt"]
    assert not (tmp_path / "d").exists()


def test_a_claimed_size_beyond_the_limit_is_refused(tmp_path, monkeypatch):
    source = tmp_path / "src"
    shutil.copytree(DATA / "csv", source)
    _csv_parquet_features(source)
    monkeypatch.setattr(tables, "MAX_ROWS", 10)
    with pytest.raises(AffectError, match=r"features.parquet: claims 18 rows, more than the limit of 10"):
        ingest(str(source), str(tmp_path / "d"), layout="parquet", progress=False)
    monkeypatch.setattr(tables, "MAX_ROWS", 5)
    with pytest.raises(AffectError, match=r"dev_1.arff: 6 rows, more than the limit of 5"):
        ingest(str(DATA / "avec2016"), str(tmp_path / "d"), layout="avec2016", progress=False)


VALID_ARFF = (DATA / "avec2016" / APPEARANCE / "train_1.arff").read_bytes()
VALID_CSV = (DATA / "csv" / "features" / "train_1.csv").read_bytes()


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Valid bytes with a random slice replaced by random bytes, or truncated."""
    position = st.integers(0, len(valid))
    return st.one_of(
        st.builds(
            lambda i, j, junk: valid[: min(i, j)] + junk + valid[max(i, j) :],
            position,
            position,
            st.binary(max_size=12),
        ),
        st.builds(lambda i: valid[:i], position),
        st.builds(
            lambda i, c: valid[:i] + bytes([c]) + valid[i + 1 :],
            position,
            st.sampled_from(b",?\n'\"%{@ .-e9\x00\xff"),
        ),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), _mutations(VALID_ARFF)))
def test_fuzzed_arff_bytes_give_a_table_or_an_affect_error(data):
    try:
        read_arff(data, "fuzz.arff")
    except AffectError as error:
        assert str(error).startswith("fuzz.arff: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), _mutations(VALID_CSV)))
def test_fuzzed_csv_and_parquet_bytes_give_a_table_or_an_affect_error(data):
    for reader in (read_csv_table, read_parquet_table):
        try:
            reader(data, "fuzz.file")
        except AffectError as error:
            assert str(error).startswith("fuzz.file: ")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_mutations(VALID_ARFF))
def test_fuzzed_corpus_file_gives_a_corpus_or_an_affect_error(tmp_path, data):
    root = tmp_path / uuid.uuid4().hex
    shutil.copytree(DATA / "avec2016", root)
    (root / APPEARANCE / "train_1.arff").write_bytes(data)
    try:
        corpus = readers.read_source(str(root), "avec2016")
    except AffectError as error:
        assert str(root) in str(error) or "train_1" in str(error)
    else:
        assert corpus.videos and all(v.features.shape[1] == corpus.feature_dim for v in corpus.videos)
    shutil.rmtree(root)
