"""Writers of a corpus in the input layouts of DESIGN.md section 4: ``avec2016``, ``csv`` and ``parquet``.

All three hold the same values: features and labels are float32 in the corpus, and the text layouts print
each float32 in its shortest exact decimal form, so every layout reads back to the same numbers. Frame times
are printed with the fewest decimals (at least 2) that represent them exactly (``0.00``, ``0.04`` at 25 fps).

avec2016 (ROOT = the output directory; ``<set>`` is each feature set, e.g. appearance, geometric)::

    ROOT/features_video_<set>/<video_id>.arff           @relation features_video_<set>
                                                        @attribute Instance_name string
                                                        @attribute frameTime numeric
                                                        @attribute <set>_0 numeric ... (one per feature)
                                                        @data
                                                        train_1,0.00,0.5123,-1.2,...   (? = no face)
    ROOT/ratings_gold_standard/arousal/<video_id>.arff  @relation GOLDSTANDARD
    ROOT/ratings_gold_standard/valence/<video_id>.arff  @attribute Instance_name string
                                                        @attribute frameTime numeric
                                                        @attribute GoldStandard numeric
                                                        @data
                                                        train_1,0.00,-0.184266

csv::

    ROOT/features/<video_id>.csv   header frameTime,<feature names...>; NaN in every feature column = no face
    ROOT/labels/<video_id>.csv     header frameTime,arousal,valence (labelled videos only)
    ROOT/partition.csv             header video_id,split (every video)

parquet (one file per table; rows ordered by video in corpus order, then by time; one row group per video)::

    ROOT/features.parquet   video_id string, frameTime float64, then one float32 column per feature (named
                            as in the corpus, e.g. appearance_0 .. geometric_315); NaN (not null) in every
                            feature column of a frame = no face
    ROOT/labels.parquet     video_id string, frameTime float64, arousal float32, valence float32
                            (labelled videos only; NaN where a frame is unlabelled)
    ROOT/partition.parquet  video_id string, split string (every video)

    features.parquet carries schema metadata (informative, readers need not use it): ``affect.fps``
    (e.g. "25.0"), ``affect.feature_sets`` (JSON object set name -> dimension, in column order) and
    ``affect.source``.

Video ids are train_1..train_N, dev_1.., test_1..; the prefix before the last underscore is the split. Test
videos have no label files unless the corpus labels them. Writing goes to a hidden sibling directory that is
renamed to ROOT when complete, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video
from affect_core.errors import AffectError
from affect_core.synth.generator import SynthConfig, SyntheticCorpus, feature_sets, generate

LAYOUTS = ("avec2016", "csv", "parquet")
ARFF_MISSING = "?"
CSV_MISSING = "NaN"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ARFF_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_NO_HEADER = pa_csv.WriteOptions(include_header=False, quoting_style="none")


def write_corpus(
    source: SynthConfig | SyntheticCorpus | Corpus,
    out_dir: str | os.PathLike[str],
    layout: str = "avec2016",
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Corpus:
    """Write a corpus (generated first when given a ``SynthConfig``) to ``out_dir`` in one input layout.

    out_dir must not exist or be empty, unless ``overwrite`` (then it is replaced as a whole). Returns the
    corpus written. Raises ``AffectError`` for an unknown layout, an unusable output directory or a corpus
    that the layout cannot hold.
    """
    if layout not in LAYOUTS:
        raise AffectError(f"layout {layout!r}: unknown; expected one of {', '.join(LAYOUTS)}")
    out = Path(out_dir)
    _check_target(out, overwrite)
    if isinstance(source, SynthConfig):
        source = generate(source)
    corpus = source.corpus if isinstance(source, SyntheticCorpus) else source
    _check_corpus(corpus)

    writer: Callable[[Corpus, Path, bool], None] = {
        "avec2016": _write_avec2016,
        "csv": _write_csv,
        "parquet": _write_parquet,
    }[layout]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir()
        writer(corpus, staging, progress)
        _check_target(out, overwrite)  # again: something may have appeared meanwhile
        if out.is_dir() and any(out.iterdir()):
            shutil.rmtree(out)  # only reached with overwrite
        elif out.is_dir():
            out.rmdir()
        os.replace(staging, out)
    except OSError as error:
        raise AffectError(f"{out}: cannot write the corpus ({error})") from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return corpus


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise AffectError(f"{out}: exists and is not a directory; expected a new or empty directory")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise AffectError(
            f"{out}: directory is not empty; expected a new or empty directory (overwrite=True or "
            "--overwrite replaces it)"
        )


def _check_corpus(corpus: Corpus) -> None:
    if not corpus.videos:
        raise AffectError("corpus: no videos to write")
    seen: set[str] = set()
    for video in corpus.videos:
        where = f"corpus video {video.video_id!r}"
        if not _SAFE_NAME.match(video.video_id) or video.video_id in seen:
            raise AffectError(f"{where}: expected a unique id of letters, digits, '_', '.', '-' (e.g. train_1)")
        seen.add(video.video_id)
        if video.features.ndim != 2 or video.features.shape[1] != corpus.feature_dim:
            raise AffectError(
                f"{where}: features of shape {video.features.shape}, expected (frames, {corpus.feature_dim})"
            )
        if video.time_s.shape != (video.num_frames,):
            raise AffectError(f"{where}: time_s of shape {video.time_s.shape}, expected ({video.num_frames},)")
        for dimension in AFFECT_DIMENSIONS:
            labels = video.labels(dimension)
            if labels is not None and labels.shape != (video.num_frames,):
                raise AffectError(f"{where}: {dimension} of shape {labels.shape}, expected ({video.num_frames},)")
    for name in feature_sets(corpus):
        if not _SAFE_NAME.match(name):
            raise AffectError(f"corpus feature set {name!r}: expected letters, digits, '_', '.', '-'")


def _videos(corpus: Corpus, progress: bool, layout: str) -> list[Video]:
    if not progress:
        return corpus.videos
    from tqdm import tqdm

    return tqdm(corpus.videos, desc=f"writing {layout}", unit="video")


def _time_strings(time_s: np.ndarray) -> pa.Array:
    """Frame times as text with the fewest decimals (2 to 6) that hold them exactly, e.g. 0.00, 0.04, 0.08."""
    for decimals in range(2, 7):
        if np.all(np.abs(np.round(time_s, decimals) - time_s) < 1e-9):
            break
    return pa.array(np.char.mod(f"%.{decimals}f", time_s))


def _value_strings(values: np.ndarray, missing: str) -> pa.Array:
    """float32 values as their shortest exact decimal text; NaN as ``missing``."""
    array = pa.array(np.asarray(values, dtype=np.float32), from_pandas=True)  # NaN -> null
    return pc.fill_null(pc.cast(array, pa.string()), missing)


def _write_rows(path: Path, header: str, columns: list[pa.Array]) -> None:
    """Write a text header, then the columns as unquoted comma-separated rows (fast for large files)."""
    table = pa.table(columns, names=[f"c{i}" for i in range(len(columns))])
    with pa.OSFile(str(path), "wb") as sink:
        sink.write(header.encode("utf-8"))
        pa_csv.write_csv(table, sink, _NO_HEADER)


def _arff_name(name: str) -> str:
    if _ARFF_PLAIN.match(name):
        return name
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _arff_header(relation: str, numeric: list[str]) -> str:
    lines = [
        f"@relation {_arff_name(relation)}",
        "",
        "@attribute Instance_name string",
        "@attribute frameTime numeric",
    ]
    lines += [f"@attribute {_arff_name(name)} numeric" for name in numeric]
    return "\n".join([*lines, "", "@data", ""])


def _write_avec2016(corpus: Corpus, root: Path, progress: bool) -> None:
    sets = feature_sets(corpus)
    for name in sets:
        (root / f"features_video_{name}").mkdir()
    for dimension in AFFECT_DIMENSIONS:
        (root / "ratings_gold_standard" / dimension).mkdir(parents=True)
    gold_header = _arff_header("GOLDSTANDARD", ["GoldStandard"])
    for video in _videos(corpus, progress, "avec2016"):
        ids = pa.array([video.video_id] * video.num_frames)
        times = _time_strings(video.time_s)
        for name, columns in sets.items():
            header = _arff_header(f"features_video_{name}", corpus.feature_names[columns])
            block = video.features[:, columns]
            values = [_value_strings(block[:, j], ARFF_MISSING) for j in range(block.shape[1])]
            _write_rows(root / f"features_video_{name}" / f"{video.video_id}.arff", header, [ids, times, *values])
        for dimension in AFFECT_DIMENSIONS:
            labels = video.labels(dimension)
            if labels is not None:
                path = root / "ratings_gold_standard" / dimension / f"{video.video_id}.arff"
                _write_rows(path, gold_header, [ids, times, _value_strings(labels, ARFF_MISSING)])


def _csv_header(names: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(names)
    return buffer.getvalue()


def _label_block(video: Video) -> list[np.ndarray]:
    """Arousal and valence of a labelled video; an unlabelled dimension is all NaN."""
    nan = np.full(video.num_frames, np.nan, dtype=np.float32)
    return [nan if video.labels(d) is None else video.labels(d) for d in AFFECT_DIMENSIONS]


def _write_csv(corpus: Corpus, root: Path, progress: bool) -> None:
    (root / "features").mkdir()
    (root / "labels").mkdir()
    feature_header = _csv_header(["frameTime", *corpus.feature_names])
    label_header = _csv_header(["frameTime", *AFFECT_DIMENSIONS])
    for video in _videos(corpus, progress, "csv"):
        times = _time_strings(video.time_s)
        values = [_value_strings(video.features[:, j], CSV_MISSING) for j in range(corpus.feature_dim)]
        _write_rows(root / "features" / f"{video.video_id}.csv", feature_header, [times, *values])
        if video.labelled:
            labels = [_value_strings(track, CSV_MISSING) for track in _label_block(video)]
            _write_rows(root / "labels" / f"{video.video_id}.csv", label_header, [times, *labels])
    partition = [pa.array([v.video_id for v in corpus.videos]), pa.array([v.split for v in corpus.videos])]
    _write_rows(root / "partition.csv", _csv_header(["video_id", "split"]), partition)


def _write_parquet(corpus: Corpus, root: Path, progress: bool) -> None:
    dims = {name: columns.stop - columns.start for name, columns in feature_sets(corpus).items()}
    metadata = {
        "affect.fps": repr(float(corpus.fps)),
        "affect.feature_sets": json.dumps(dims),
        "affect.source": corpus.source,
    }
    feature_schema = pa.schema(
        [("video_id", pa.string()), ("frameTime", pa.float64())]
        + [(name, pa.float32()) for name in corpus.feature_names],
        metadata=metadata,
    )
    label_schema = pa.schema(
        [("video_id", pa.string()), ("frameTime", pa.float64())] + [(d, pa.float32()) for d in AFFECT_DIMENSIONS]
    )
    with (
        pq.ParquetWriter(root / "features.parquet", feature_schema) as features,
        pq.ParquetWriter(root / "labels.parquet", label_schema) as labels,
    ):
        for video in _videos(corpus, progress, "parquet"):
            ids = pa.array([video.video_id] * video.num_frames, pa.string())
            times = pa.array(video.time_s, pa.float64())
            values = [pa.array(video.features[:, j], pa.float32()) for j in range(corpus.feature_dim)]
            features.write_table(pa.Table.from_arrays([ids, times, *values], schema=feature_schema))
            if video.labelled:
                tracks = [pa.array(track, pa.float32()) for track in _label_block(video)]
                labels.write_table(pa.Table.from_arrays([ids, times, *tracks], schema=label_schema))
    partition = pa.table({"video_id": [v.video_id for v in corpus.videos], "split": [v.split for v in corpus.videos]})
    pq.write_table(partition, root / "partition.parquet")
