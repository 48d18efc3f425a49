"""Writers of a corpus in the input layouts of docs/data_formats.md: ``avec2016``, ``csv``, ``parquet``,
``openface`` and ``muse``.

All three hold the same values: features and labels are float32 in the corpus, and the text layouts print
each float32 in its shortest exact decimal form, so every layout reads back to the same numbers. Frame times
are printed with the fewest decimals (at least 2) that represent them exactly (``0.00``, ``0.04`` at 25 fps).

avec2016, the release's layout (ROOT = the output directory; ``<set>`` is each feature set, e.g. appearance,
geometric; ``<dim>`` arousal and valence)::

    ROOT/features_video_<set>/<dim>/<video_id>.arff     as below; a frame without a face is a row of zeros.
                                                        A corpus read from the release keeps each dimension's
                                                        version; any other corpus has one version, written
                                                        in both dimension folders.
    ROOT/ratings_individual_centred/<dim>/<video_id>.csv   time;R1 ;R2 ;... (';'-separated, a trailing space
                                                        after each rater's name as in the release; written
                                                        when the corpus has per-rater ratings)

avec2016 flat (``flat=True``; the variant earlier tools wrote)::

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

openface (OpenFace 2.x FeatureExtraction's CSV; ``label_fps`` writes the labels at their own rate, ``affwild2``
writes Aff-Wild2 VA files instead of label CSVs)::

    ROOT/features/<video_id>.csv   frame, face_id, timestamp, confidence, success, then the features named as
                                   OpenFace's columns (gaze_*, pose_*, x_*/y_*, X_*/Y_*/Z_*, p_*, AU*_r, AU*_c
                                   in that order; a corpus read from OpenFace keeps its names), ', '-separated;
                                   frames are numbered from 1, timestamps printed to the millisecond; a frame
                                   without a face has success 0, confidence 0 and zeros
    ROOT/labels/<video_id>.csv     frameTime,arousal,valence (at ``label_fps`` when given); or
    ROOT/labels/<video_id>.txt     valence,arousal then one line per frame, -5 where unlabelled
    ROOT/partition.csv             video_id,split

muse (MuSe 2021-2023)::

    ROOT/feature_segments/<set>/<video_id>.csv   timestamp (ms),segment_id,<feature names...> (segment_id: one
                                                 per 10 s)
    ROOT/label_segments/<dim>/<video_id>.csv     timestamp,value,segment_id (at ``label_fps`` when given)
    ROOT/metadata/partition.csv                  Id,Partition (train, devel, test)

Video ids are train_1..train_N, dev_1.., test_1..; the prefix before the last underscore is the split. Test
videos have no label files unless the corpus labels them. Writing goes to a hidden sibling directory that is
renamed to ROOT when complete, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from affect_core.data import keys
from affect_core.data.records import AFFECT_DIMENSIONS, Corpus, Video
from affect_core.errors import AffectError
from affect_core.synth.generator import SynthConfig, SyntheticCorpus, feature_sets, generate

LAYOUTS = ("avec2016", "csv", "parquet", "openface", "muse")
MUSE_SEGMENT_S = 10.0
# OpenFace 2.x FeatureExtraction's feature columns in file order (68 landmarks, 34 PDM modes, 17 AU
# intensities, 18 AU occurrences), the names a generated corpus's features get in the openface layout.
_OPENFACE_AUS_R = ("01", "02", "04", "05", "06", "07", "09", "10", "12", "14", "15", "17", "20", "23", "25", "26", "45")
_OPENFACE_AUS_C = (*_OPENFACE_AUS_R[:-1], "28", "45")
OPENFACE_FEATURES = (
    [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"]
    + ["gaze_angle_x", "gaze_angle_y"]
    + [f"pose_{k}{a}" for k in "TR" for a in "xyz"]
    + [f"{a}_{i}" for a in "xy" for i in range(68)]
    + [f"{a}_{i}" for a in "XYZ" for i in range(68)]
    + ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"]
    + [f"p_{i}" for i in range(34)]
    + [f"AU{n}_r" for n in _OPENFACE_AUS_R]
    + [f"AU{n}_c" for n in _OPENFACE_AUS_C]
)


@dataclass
class WriteOptions:
    """Layout variants. flat: avec2016's flat variant instead of the release's per-dimension folders.
    label_fps: openface/muse labels at this rate (None: on the feature frames). affwild2: openface labels as
    Aff-Wild2 VA text files."""

    flat: bool = False
    label_fps: float | None = None
    affwild2: bool = False


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
    options: WriteOptions | None = None,
) -> Corpus:
    """Write a corpus (generated first when given a ``SynthConfig``) to ``out_dir`` in one input layout.

    out_dir must not exist or be empty, unless ``overwrite`` (then it is replaced as a whole). Returns the
    corpus written. Raises ``AffectError`` for an unknown layout, an unusable output directory or a corpus
    that the layout cannot hold. options: layout variants (:class:`WriteOptions`).
    """
    options = options or WriteOptions()
    if options.label_fps is not None and not (math.isfinite(options.label_fps) and options.label_fps > 0):
        raise AffectError(f"label_fps={options.label_fps}: expected a positive rate in labels per second")
    if layout not in LAYOUTS:
        raise AffectError(f"layout {layout!r}: unknown; expected one of {', '.join(LAYOUTS)}")
    out = Path(out_dir)
    _check_target(out, overwrite)
    if isinstance(source, SynthConfig):
        source = generate(source)
    corpus = source.corpus if isinstance(source, SyntheticCorpus) else source
    _check_corpus(corpus)

    writer: Callable[[Corpus, Path, bool, WriteOptions], None] = {
        "avec2016": _write_avec2016,
        "csv": _write_csv,
        "parquet": _write_parquet,
        "openface": _write_openface,
        "muse": _write_muse,
    }[layout]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir()
        writer(corpus, staging, progress, options)
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


def _write_avec2016(corpus: Corpus, root: Path, progress: bool, options: WriteOptions) -> None:
    if not options.flat:
        _write_avec2016_release(corpus, root, progress)
        return
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


def _write_csv(corpus: Corpus, root: Path, progress: bool, options: WriteOptions) -> None:
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


def _write_parquet(corpus: Corpus, root: Path, progress: bool, options: WriteOptions) -> None:
    dims = {name: columns.stop - columns.start for name, columns in feature_sets(corpus).items()}
    metadata = {
        keys.FPS: repr(float(corpus.fps)),
        keys.FEATURE_SETS: json.dumps(dims),
        keys.SOURCE: corpus.source,
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


# ---------------------------------------------------------------------------------------------- avec2016 release
def _release_blocks(corpus: Corpus) -> list[tuple[str, str, list[int]]]:
    """(dimension, set name, columns) to write: a corpus read from the release keeps each dimension's version of
    a set; any other corpus writes its one version of every set for both dimensions."""
    raw = json.loads(corpus.metadata.get("feature_sets", "[]") or "[]") if _is_json(corpus) else []
    if any(s.get("dimension") for s in raw):
        return [(s["dimension"], s["set"], list(range(int(s["start"]), int(s["stop"])))) for s in raw]
    sets = feature_sets(corpus)
    return [(d, name, list(range(cols.start, cols.stop))) for d in AFFECT_DIMENSIONS for name, cols in sets.items()]


def _is_json(corpus: Corpus) -> bool:
    """The generator records feature_sets as "name:dim,..."; readers as a JSON list."""
    return corpus.metadata.get("feature_sets", "").startswith("[")


def _release_folder(set_name: str) -> str:
    return f"features_video_{set_name}" if set_name in ("appearance", "geometric") else f"features_{set_name}"


def _attribute_names(corpus: Corpus, columns: list[int]) -> list[str]:
    """Attribute names without the "<dimension>/<set>:" prefix a corpus read from the release carries."""
    return [str(corpus.feature_names[j]).split(":", 1)[-1] for j in columns]


def _write_avec2016_release(corpus: Corpus, root: Path, progress: bool) -> None:
    blocks = _release_blocks(corpus)
    for dimension, name, _ in blocks:
        (root / _release_folder(name) / dimension).mkdir(parents=True, exist_ok=True)
    for dimension in AFFECT_DIMENSIONS:
        (root / "ratings_gold_standard" / dimension).mkdir(parents=True)
    gold_header = _arff_header("GOLDSTANDARD", ["GoldStandard"])
    for video in _videos(corpus, progress, "avec2016"):
        ids = pa.array([video.video_id] * video.num_frames)
        times = _time_strings(video.time_s)
        for dimension, name, columns in blocks:
            folder = _release_folder(name)
            header = _arff_header(folder, _attribute_names(corpus, columns))
            block = video.features[:, columns].copy()
            if folder.startswith("features_video_"):
                block[np.isnan(block).all(axis=1)] = 0.0  # the release's frame without a face
            values = [_value_strings(block[:, j], ARFF_MISSING) for j in range(block.shape[1])]
            _write_rows(root / folder / dimension / f"{video.video_id}.arff", header, [ids, times, *values])
        for dimension in AFFECT_DIMENSIONS:
            labels = video.labels(dimension)
            if labels is not None:
                path = root / "ratings_gold_standard" / dimension / f"{video.video_id}.arff"
                _write_rows(path, gold_header, [ids, times, _value_strings(labels, ARFF_MISSING)])
        _write_ratings(video, root, times)


def _write_ratings(video: Video, root: Path, times: pa.Array) -> None:
    for dimension in AFFECT_DIMENSIONS:
        raters = [(k.split("/", 1)[1], v) for k, v in (video.ratings or {}).items() if k.startswith(dimension + "/")]
        if not raters:
            continue
        folder = root / "ratings_individual_centred" / dimension
        folder.mkdir(parents=True, exist_ok=True)
        header = ";".join(["time", *(f"{rater} " for rater, _ in raters)]) + "\n"
        columns = [times, *(_value_strings(trace, "") for _, trace in raters)]
        table = pa.table(columns, names=[f"c{i}" for i in range(len(columns))])
        options = pa_csv.WriteOptions(include_header=False, delimiter=";", quoting_style="none")
        with pa.OSFile(str(folder / f"{video.video_id}.csv"), "wb") as sink:
            sink.write(header.encode("utf-8"))
            pa_csv.write_csv(table, sink, options)


# ----------------------------------------------------------------------------------------------------- openface
def _label_grid(video: Video, label_fps: float | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Label times and tracks (arousal, valence): on the feature frames, or resampled at ``label_fps`` from the
    video's first frame time by the readers' own rule (``readers.labels_on_frames``)."""
    from affect_core.data.readers import labels_on_frames

    tracks = _label_block(video)
    if label_fps is None:
        return video.time_s, tracks
    start, stop = float(video.time_s[0]), float(video.time_s[-1])
    times = np.round(start + np.arange(int(math.floor((stop - start) * label_fps + 1e-9)) + 1) / label_fps, 6)
    return times, [labels_on_frames(video.time_s, t.astype(np.float64), times).astype(np.float32) for t in tracks]


def _openface_names(corpus: Corpus) -> list[str]:
    names = [str(n).split(":", 1)[-1] for n in corpus.feature_names]
    if set(names) <= set(OPENFACE_FEATURES) and len(set(names)) == len(names):
        return names
    if corpus.feature_dim > len(OPENFACE_FEATURES):
        raise AffectError(
            f"corpus: {corpus.feature_dim} features, more than OpenFace's {len(OPENFACE_FEATURES)} columns; "
            "expected at most that many for the openface layout"
        )
    return list(OPENFACE_FEATURES[: corpus.feature_dim])


def _write_openface(corpus: Corpus, root: Path, progress: bool, options: WriteOptions) -> None:
    (root / "features").mkdir()
    (root / "labels").mkdir()
    header = ", ".join(["frame", "face_id", "timestamp", "confidence", "success", *_openface_names(corpus)]) + "\n"
    for video in _videos(corpus, progress, "openface"):
        face = ~np.isnan(video.features).all(axis=1)
        features = np.where(face[:, None], video.features, np.float32(0.0))
        columns = [
            pa.array(np.arange(1, video.num_frames + 1)).cast(pa.string()),
            pa.array(["0"] * video.num_frames),
            pa.array(np.char.mod("%.3f", video.time_s)),
            pa.array(np.where(face, "0.98", "0.00")),
            pa.array(np.where(face, "1", "0")),
            *(_value_strings(features[:, j], CSV_MISSING) for j in range(corpus.feature_dim)),
        ]
        table = pa.table(columns, names=[f"c{i}" for i in range(len(columns))])
        text = io.BytesIO()
        pa_csv.write_csv(table, text, _NO_HEADER)
        body = text.getvalue().replace(b",", b", ")
        (root / "features" / f"{video.video_id}.csv").write_bytes(header.encode("utf-8") + body)
        if not video.labelled:
            continue
        if options.affwild2:
            values = [np.where(np.isnan(t), np.float32(-5.0), t) for t in _label_block(video)[::-1]]
            rows = [_value_strings(v, "-5") for v in values]
            _write_rows(root / "labels" / f"{video.video_id}.txt", "valence,arousal\n", rows)
            continue
        times, tracks = _label_grid(video, options.label_fps)
        labels = [_value_strings(t, CSV_MISSING) for t in tracks]
        label_header = _csv_header(["frameTime", *AFFECT_DIMENSIONS])
        _write_rows(root / "labels" / f"{video.video_id}.csv", label_header, [_time_strings(times), *labels])
    partition = [pa.array([v.video_id for v in corpus.videos]), pa.array([v.split for v in corpus.videos])]
    _write_rows(root / "partition.csv", _csv_header(["video_id", "split"]), partition)


# --------------------------------------------------------------------------------------------------------- muse
def _write_muse(corpus: Corpus, root: Path, progress: bool, options: WriteOptions) -> None:
    sets = feature_sets(corpus)
    for name in sets:
        (root / "feature_segments" / name).mkdir(parents=True)
    for dimension in AFFECT_DIMENSIONS:
        (root / "label_segments" / dimension).mkdir(parents=True)
    (root / "metadata").mkdir()
    for video in _videos(corpus, progress, "muse"):
        stamps, segments = _muse_time_columns(video.time_s)
        for name, cols in sets.items():
            header = _csv_header(["timestamp", "segment_id", *corpus.feature_names[cols]])
            values = [_value_strings(video.features[:, j], CSV_MISSING) for j in range(cols.start, cols.stop)]
            path = root / "feature_segments" / name / f"{video.video_id}.csv"
            _write_rows(path, header, [stamps, segments, *values])
        if not video.labelled:
            continue
        times, tracks = _label_grid(video, options.label_fps)
        label_stamps, label_segments = _muse_time_columns(times)
        for dimension, track in zip(AFFECT_DIMENSIONS, tracks, strict=True):
            if video.labels(dimension) is None:
                continue
            path = root / "label_segments" / dimension / f"{video.video_id}.csv"
            header = _csv_header(["timestamp", "value", "segment_id"])
            _write_rows(path, header, [label_stamps, _value_strings(track, CSV_MISSING), label_segments])
    split_names = {"dev": "devel"}
    partition = [
        pa.array([v.video_id for v in corpus.videos]),
        pa.array([split_names.get(v.split, v.split) for v in corpus.videos]),
    ]
    _write_rows(root / "metadata" / "partition.csv", _csv_header(["Id", "Partition"]), partition)


def _muse_time_columns(time_s: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """Timestamps in whole milliseconds and segment ids (1 + whole 10 s periods) as text."""
    stamps = pa.array(np.rint(time_s * 1000.0).astype(np.int64)).cast(pa.string())
    segments = pa.array(np.floor(time_s / MUSE_SEGMENT_S).astype(np.int64) + 1).cast(pa.string())
    return stamps, segments
