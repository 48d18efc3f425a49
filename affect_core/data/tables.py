"""Per-file tables of the input layouts: CSV and Parquet files read into named float columns.

Every reader returns a :class:`FileTable` (column names, one float64 array per column, a way to name a row in
messages) or raises AffectError naming the file, the line/row and the column."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from affect_core.errors import AffectError

# A video longer than this (about 111 hours at 25 fps) is taken as a corrupt or hostile size claim.
MAX_ROWS = 10_000_000
CSV_NULLS = ["", "?", "NaN", "nan", "NA"]


@dataclass
class FileTable:
    """Columns of one input file. ``columns`` maps names (file order) to float64 arrays, NaN for missing
    values."""

    where: str
    names: list[str]
    columns: dict[str, np.ndarray]
    row_ref: Callable[[int], str]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(next(iter(self.columns.values())).shape[0]) if self.columns else 0


def _fail(where: str, problem: str) -> AffectError:
    return AffectError(f"{where}: {problem}")


def _check_text(data: bytes, where: str, kind: str) -> bytes:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise _fail(where, f"empty file; expected a {kind} header line and data rows")
    if b"\x00" in data[:4096]:
        raise _fail(where, f"binary or UTF-16 content; expected {kind} text in UTF-8")
    return data


def _header(data: bytes, where: str, delimiter: str = ",") -> list[str]:
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(where, f"line 1: header is not UTF-8 text (byte {exc.start})") from None
    try:
        names = [n.strip() for n in next(csv.reader([text], delimiter=delimiter))]
    except (csv.Error, StopIteration):
        raise _fail(where, f"line 1: unparseable CSV header; expected {delimiter!r}-separated column names") from None
    if any(not n for n in names):
        raise _fail(where, f"line 1: empty column name in header {text[:120]!r}; expected named columns")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(where, f"line 1: column {duplicates[0]!r} appears more than once; expected unique names")
    return names


def read_csv_table(data: bytes, where: str, *, string_columns: tuple[str, ...] = (), delimiter: str = ",") -> FileTable:
    """Parse a CSV file with a header line; every column is numeric except ``string_columns``.

    Numeric columns accept numbers, ``nan`` and empty/``?`` (read as NaN); blanks around values are ignored
    (OpenFace separates with ', '). Raises AffectError naming line and column."""
    data = _check_text(data, where, "CSV")
    names = _header(data, where, delimiter)
    types = {name: (pa.string() if name in string_columns else pa.float64()) for name in names}
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=True, column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                null_values=CSV_NULLS,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        _diagnose_csv(data, where, names, string_columns, delimiter)
        raise _fail(where, f"unparseable CSV ({str(exc).splitlines()[0][:200]})") from None
    if table.num_rows == 0:
        raise _fail(where, "no data rows after the header; expected one row per frame")
    if table.num_rows > MAX_ROWS:
        raise _fail(where, f"{table.num_rows} rows, more than the limit of {MAX_ROWS} frames per video")
    columns: dict[str, np.ndarray] = {}
    for name in names:
        column = table.column(name)
        if name in string_columns:
            columns[name] = np.asarray(column.to_pylist(), dtype=object)
        else:
            columns[name] = column.to_numpy().astype(np.float64, copy=False)
    blank_lines = b"\n\n" in data or b"\n\r\n" in data
    if blank_lines:
        lines = _csv_line_numbers(data)
        return FileTable(where, names, columns, lambda i: f"line {int(lines[i])}")
    return FileTable(where, names, columns, lambda i: f"line {i + 2}")


def _csv_line_numbers(data: bytes) -> np.ndarray:
    out = [no for no, line in enumerate(data.split(b"\n"), start=1) if no > 1 and line.strip()]
    return np.asarray(out, dtype=np.int64)


def _diagnose_csv(
    data: bytes, where: str, names: list[str], string_columns: tuple[str, ...], delimiter: str = ","
) -> None:
    """Scan line by line to raise the precise error the fast reader hit (row count, encoding, number)."""
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if line_no == 1 or not raw.strip():
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise _fail(where, f"line {line_no}: not UTF-8 text (byte {exc.start}); expected UTF-8") from None
        try:
            fields = next(csv.reader([text], strict=True, delimiter=delimiter))
        except csv.Error as exc:
            raise _fail(where, f"line {line_no}: unparseable row ({exc})") from None
        if len(fields) != len(names):
            raise _fail(
                where,
                f"line {line_no}: {len(fields)} values, expected {len(names)} (one per header column); "
                "truncated or malformed row",
            )
        for name, value in zip(names, fields, strict=False):
            if name in string_columns or value.strip() in CSV_NULLS:
                continue
            try:
                float(value)
            except ValueError:
                raise _fail(
                    where,
                    f"line {line_no}, column {name!r}: value {value.strip()[:40]!r} is not a number; "
                    "expected a numeric value",
                ) from None


def read_parquet_table(handle: io.IOBase | bytes, where: str, *, string_columns: tuple[str, ...] = ()) -> FileTable:
    """Read a Parquet file whose columns are all numeric except ``string_columns``; rows are named 1-based."""
    source = pa.BufferReader(handle) if isinstance(handle, bytes) else handle
    if isinstance(handle, bytes) and not handle:
        raise _fail(where, "empty file; expected a Parquet file")
    try:
        parquet = pq.ParquetFile(source)
        claimed = parquet.metadata.num_rows
        if claimed > MAX_ROWS:
            raise _fail(where, f"claims {claimed} rows, more than the limit of {MAX_ROWS} frames per video")
        table = parquet.read()
    except AffectError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _fail(where, f"unparseable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    return arrow_file_table(table, where, string_columns=string_columns)


def arrow_file_table(table: pa.Table, where: str, *, string_columns: tuple[str, ...] = ()) -> FileTable:
    """An Arrow table read from a Parquet file (or rows of one) as a FileTable: numeric columns but
    ``string_columns``; rows are named 1-based."""
    if table.num_rows == 0:
        raise _fail(where, "no rows; expected one row per frame")
    names = list(table.column_names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(where, f"column {duplicates[0]!r} appears more than once; expected unique names")
    columns: dict[str, np.ndarray] = {}
    for name in names:
        column = table.column(name)
        kind = column.type
        if name in string_columns:
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind)):
                raise _fail(where, f"column {name!r} has type {kind}; expected strings")
            columns[name] = np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
            continue
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise _fail(where, f"column {name!r} has type {kind}; expected a numeric column")
        columns[name] = column.cast(pa.float64()).to_numpy()
    metadata = {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (table.schema.metadata or {}).items()
    }
    return FileTable(where, names, columns, lambda i: f"row {i + 1}", metadata)


def split_by_video(table: FileTable, key: str = "video_id") -> dict[str, FileTable]:
    """Split a table holding many videos into one table per video id (rows keep their order within a
    video)."""
    ids = table.columns[key]
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    bounds = [0, *(np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1).tolist(), len(order)]
    names = [n for n in table.names if n != key]
    out: dict[str, FileTable] = {}
    for start, stop in zip(bounds[:-1], bounds[1:], strict=False):
        rows = order[start:stop]
        columns = {n: table.columns[n][rows] for n in names}
        out[str(sorted_ids[start])] = FileTable(
            table.where, names, columns, lambda i, rows=rows: f"row {int(rows[i]) + 1}", table.metadata
        )
    return out
