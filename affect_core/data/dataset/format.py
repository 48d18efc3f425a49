"""What a dataset is on disk: its format name, its Parquet schema and the ``affect.*`` metadata its description and
files carry (the keys: :mod:`affect_core.data.keys`), written from a corpus and read back (feature sets chosen by
name).

Columns (docs/data_formats.md): video_id, split, frame (int32), time_s (float64), features (list<float32>, one list per
frame, NaN where there is no face), arousal, valence (float32, null where unlabelled), and ``ratings`` (one value per
rater track named in ``affect.ratings``) where the corpus has per-rater ratings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from affect_core import storage
from affect_core.data import keys
from affect_core.data.readers import parse_feature_sets, set_ranges
from affect_core.data.records import AFFECT_DIMENSIONS, Corpus
from affect_core.errors import AffectError

FORMAT = "affect-dataset/2"
KIND = "dataset"  # the affect.kind of a dataset table
PREDICTIONS_KIND = "predictions"  # the affect.kind of a predictions table (affect_core.scoring)
RESERVED_COLUMNS = ("video_id", "split", "frame", "time_s", "features", *AFFECT_DIMENSIONS, "ratings")


def dataset_schema(feature_dim: int = 0, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The Parquet schema of a dataset file. ``features`` is a variable-size list (Delta Lake has no fixed-size list
    type); every frame's list has the dataset's feature count. A ``ratings`` column when ``metadata`` names rater
    tracks."""
    fields = [
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("frame", pa.int32()),
        ("time_s", pa.float64()),
        ("features", pa.list_(pa.float32())),
        ("arousal", pa.float32()),
        ("valence", pa.float32()),
    ]
    if metadata and metadata.get(keys.RATINGS):
        fields.append(("ratings", pa.list_(pa.float32())))
    return pa.schema(fields, metadata=metadata)


def rating_names(corpus: Corpus) -> list[str]:
    """The per-rater rating tracks of a corpus ("<dimension>/<rater>"), in column order."""
    raw = corpus.metadata.get("ratings")
    return list(json.loads(raw)) if raw else []


def schema_rating_names(schema: pa.Schema) -> list[str] | None:
    """The rater tracks of a table's ``ratings`` column (from its schema metadata), None when it has none."""
    raw = (schema.metadata or {}).get(keys.RATINGS.encode())
    if "ratings" not in schema.names or raw is None:
        return None
    return list(json.loads(raw))


def dataset_metadata(corpus: Corpus, header: str, layout: str, source: str) -> dict[str, str]:
    """The ``affect.*`` keys of a dataset (the table's description and each file's schema metadata): feature sets
    (with their ``set`` and ``dimension`` where the source keeps a version per affect dimension), the source's
    metadata (``pooled``, ``source_format``), the per-rater tracks and the header hash ``header``."""
    sets = [{k: v for k, v in s.items() if k != "names"} for s in set_ranges(corpus)]
    extra = {key: corpus.metadata[name] for name, key in keys.SOURCE_METADATA.items() if name in corpus.metadata}
    if rating_names(corpus):
        extra[keys.RATINGS] = json.dumps(rating_names(corpus))
    return {
        **extra,
        keys.FORMAT: FORMAT,
        keys.KIND: KIND,
        keys.FEATURE_SET: corpus.feature_set,
        keys.FEATURE_SETS: json.dumps(sets),
        keys.FEATURE_NAMES: json.dumps(list(corpus.feature_names)),
        keys.FEATURE_DIM: str(corpus.feature_dim),
        keys.FPS: repr(float(corpus.fps)),
        keys.SOURCE: storage.redact(source),
        keys.LAYOUT: layout,
        keys.HEADER_HASH: header,
    }


def corpus_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The Corpus metadata a dataset's ``affect.*`` keys give back (``pooled``, ``source_format``, ``ratings``)."""
    wanted = {**keys.SOURCE_METADATA, "ratings": keys.RATINGS}
    return {name: metadata[key] for name, key in wanted.items() if key in metadata}


def metadata_feature_sets(metadata: dict[str, str]) -> list[dict[str, Any]]:
    """The feature sets a dataset's metadata records: [{name, start, stop[, set, dimension]}]."""
    return list(json.loads(metadata.get(keys.FEATURE_SETS, "[]")))


def metadata_fps(metadata: dict[str, str]) -> float:
    """The frame rate a dataset's metadata records (NaN where it records none: a predictions table)."""
    return float(metadata.get(keys.FPS, "nan"))


def selected_columns(
    metadata: dict[str, str], feature_set: str | Sequence[str] | None, where: str
) -> tuple[list[tuple[int, int]], list[str], str, list[dict[str, Any]]]:
    """Column ranges, feature names, set label and sets of the chosen feature set(s)."""
    names: list[str] = json.loads(metadata.get(keys.FEATURE_NAMES, "[]"))
    sets = metadata_feature_sets(metadata) or [
        {"name": metadata.get(keys.FEATURE_SET, "features"), "start": 0, "stop": len(names)}
    ]
    wanted = parse_feature_sets(feature_set)
    if wanted is None:
        label = metadata.get(keys.FEATURE_SET, "+".join(s["name"] for s in sets))
        return [(0, len(names))], names, label, sets
    # A name selects the set of that name, or every per-dimension version of it ("appearance" selects
    # "arousal/appearance" and "valence/appearance"), in the dataset's order.
    available = list(dict.fromkeys([*(s.get("set") or s["name"] for s in sets), *(s["name"] for s in sets)]))
    ranges, chosen_names, chosen_sets, start = [], [], [], 0
    for name in wanted:
        matching = [s for s in sets if name in (s["name"], s.get("set"))]
        if not matching:
            raise AffectError(f"{where}: unknown feature set {name!r}; available: {', '.join(available)}")
        for s in matching:
            width = int(s["stop"]) - int(s["start"])
            ranges.append((int(s["start"]), int(s["stop"])))
            chosen_names += names[int(s["start"]) : int(s["stop"])]
            extra = {k: v for k, v in s.items() if k in ("set", "dimension")}
            chosen_sets.append({"name": s["name"], "start": start, "stop": start + width, **extra})
            start += width
    prefix = [f"{s['name']}:" for s in chosen_sets]
    if all(any(n.startswith(p) for p in prefix) for n in chosen_names) and len(chosen_sets) == 1:
        chosen_names = [n.split(":", 1)[1] for n in chosen_names]  # one set: its own attribute names
    return ranges, chosen_names, "+".join(wanted), chosen_sets


def selected_feature_names(metadata: dict[str, str], feature_set: str | Sequence[str], where: str) -> list[str]:
    """The feature names a read with ``feature_set`` gives (AffectError for a set the dataset does not hold)."""
    return selected_columns(metadata, feature_set, where)[1]
