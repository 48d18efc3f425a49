"""ARFF files: the header through liac-arff, the @data section through pyarrow's CSV reader.

liac-arff parses the header (it understands AVEC's ``Instance_name string`` attribute, which scipy.io.arff
does not); parsing every data row in Python would be slow, so the @data section goes through ``pyarrow.csv``
with ``?`` read as null. When the fast path rejects the data, a line-by-line scan finds the exact line and
attribute for the message (and accepts what pyarrow is stricter about, such as blanks after commas)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

import arff
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from affect_core.errors import AffectError

NUMERIC_TYPES = ("NUMERIC", "REAL", "INTEGER")
_DATA_LINE = re.compile(rb"^[ \t]*@data[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_COMMENT_LINE = re.compile(rb"^[ \t]*%", re.MULTILINE)


@dataclass
class ArffTable:
    """The parsed content of one ARFF file.

    attributes: ``(name, type)`` in file order; type is "NUMERIC"/"REAL"/"INTEGER"/"STRING" or a list
    (nominal). columns: one array per attribute, float64 (NaN for ``?``) for numeric attributes, object (str)
    otherwise. data_lines: 1-based line number of every data row in the file, for messages."""

    where: str
    relation: str
    attributes: list[tuple[str, object]]
    columns: dict[str, np.ndarray]
    data_lines: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.data_lines.shape[0])

    def row_ref(self, row: int) -> str:
        return f"line {int(self.data_lines[row])}"


def _fail(where: str, problem: str) -> AffectError:
    return AffectError(f"{where}: {problem}")


def read_arff(data: bytes, where: str) -> ArffTable:
    """Parse ARFF bytes; ``where`` (a redacted path) names the file in every error message.

    Raises AffectError for an empty file, a non-UTF-8 header, a missing @data line, a header liac-arff
    rejects, sparse rows, rows with the wrong number of values, non-numeric values in numeric attributes and
    files with no data rows."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise _fail(where, "empty file; expected an ARFF header (@relation, @attribute ..., @data) and data rows")
    if b"\x00" in data[:4096]:
        raise _fail(where, "binary or UTF-16 content; expected an ARFF text file in UTF-8")
    match = _DATA_LINE.search(data)
    if match is None:
        raise _fail(where, "no '@data' line; expected an ARFF file (@relation, @attribute ..., @data, rows)")
    try:
        header = data[: match.start()].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(where, f"header is not UTF-8 text (byte {exc.start}); expected an ARFF text file") from None
    try:
        parsed = arff.loads(header + "@data\n")
    except arff.ArffException as exc:
        raise _fail(where, f"unparseable ARFF header ({exc}); expected @relation then @attribute lines") from None
    except Exception as exc:  # liac-arff raises plain errors for some malformed headers
        raise _fail(where, f"unparseable ARFF header ({type(exc).__name__}: {exc})") from None
    attributes = [(str(name), kind) for name, kind in parsed["attributes"]]
    if not attributes:
        raise _fail(where, "no @attribute lines; expected Instance_name, frameTime and numeric attributes")
    names = [name for name, _ in attributes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(where, f"attribute {duplicates[0]!r} is declared more than once; expected unique names")

    data_line_no = data.count(b"\n", 0, match.start()) + 1
    body_start = match.end() + 1 if data[match.end() : match.end() + 1] == b"\n" else match.end()
    body = data[body_start:]
    columns, lines = _parse_rows(body, attributes, where, first_line=data_line_no + 1)
    if lines.shape[0] == 0:
        raise _fail(where, "no data rows after @data; expected one row per frame")
    return ArffTable(where, str(parsed.get("relation", "")), attributes, columns, lines)


def _data_line_numbers(body: bytes, first_line: int) -> np.ndarray:
    """1-based file line numbers of the non-blank, non-comment lines of ``body``."""
    out = []
    for offset, line in enumerate(body.split(b"\n")):
        stripped = line.strip()
        if stripped and not stripped.startswith(b"%"):
            out.append(first_line + offset)
    return np.asarray(out, dtype=np.int64)


def _quote_char(body: bytes) -> str:
    """ARFF quotes with ' or "; the first data row tells which one this file uses."""
    start = 0
    while start < len(body):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end
        line = body[start:end].strip()
        if line and not line.startswith(b"%"):
            return "'" if line[:1] == b"'" else '"'
        start = end + 1
    return '"'


def _parse_rows(
    body: bytes, attributes: list[tuple[str, object]], where: str, *, first_line: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    names = [name for name, _ in attributes]
    numeric = [kind in NUMERIC_TYPES for _, kind in attributes]
    if body.lstrip()[:1] == b"{":
        raise _fail(where, f"line {first_line}: sparse ARFF rows ('{{...}}') are not supported; expected dense rows")
    has_comments = b"%" in body and _COMMENT_LINE.search(body) is not None  # memchr first: the regex is slow
    fast_body = body
    if has_comments:
        fast_body = b"\n".join(line for line in body.split(b"\n") if not line.lstrip().startswith(b"%"))
    # Column names are positional placeholders: attribute names may repeat characters pyarrow treats
    # specially.
    column_names = [f"c{i}" for i in range(len(names))]
    types = {
        column: (pa.float64() if is_numeric else pa.string())
        for column, is_numeric in zip(column_names, numeric, strict=False)
    }
    try:
        table = pacsv.read_csv(
            io.BytesIO(fast_body),
            read_options=pacsv.ReadOptions(column_names=column_names, use_threads=True),
            parse_options=pacsv.ParseOptions(quote_char=_quote_char(body), ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                null_values=["?"],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return _parse_rows_slow(body, attributes, where, first_line=first_line)
    columns: dict[str, np.ndarray] = {}
    for name, column, is_numeric in zip(names, column_names, numeric, strict=False):
        array = table.column(column)
        if is_numeric:
            columns[name] = array.to_numpy().astype(np.float64, copy=False)
        else:
            columns[name] = np.asarray(array.to_pylist(), dtype=object)
    if has_comments or b"\n\n" in body or b"\r\n\r\n" in body:
        lines = _data_line_numbers(body, first_line)
    else:
        lines = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
    if lines.shape[0] != table.num_rows:  # e.g. whitespace-only lines pyarrow kept: let the slow path decide
        return _parse_rows_slow(body, attributes, where, first_line=first_line)
    return columns, lines


def _parse_rows_slow(
    body: bytes, attributes: list[tuple[str, object]], where: str, *, first_line: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Line-by-line parse used when the fast path fails: finds the first bad line and attribute exactly."""
    names = [name for name, _ in attributes]
    numeric = [kind in NUMERIC_TYPES for _, kind in attributes]
    quote = _quote_char(body)
    values: list[list[object]] = [[] for _ in names]
    lines: list[int] = []
    for offset, raw in enumerate(body.split(b"\n")):
        line_no = first_line + offset
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise _fail(where, f"line {line_no}: not UTF-8 text (byte {exc.start}); expected UTF-8") from None
        if not text or text.startswith("%"):
            continue
        if text.startswith("{"):
            raise _fail(where, f"line {line_no}: sparse ARFF rows ('{{...}}') are not supported; expected dense rows")
        try:
            fields = next(csv.reader([text], quotechar=quote, skipinitialspace=True, strict=True))
        except csv.Error as exc:
            raise _fail(where, f"line {line_no}: unparseable row ({exc})") from None
        if len(fields) != len(names):
            raise _fail(
                where,
                f"line {line_no}: {len(fields)} values, expected {len(names)} (one per @attribute); "
                "truncated or malformed row",
            )
        for index, (field, is_numeric) in enumerate(zip(fields, numeric, strict=False)):
            field = field.strip()
            if not is_numeric:
                values[index].append(field)
                continue
            if field == "?":
                values[index].append(float("nan"))
                continue
            try:
                values[index].append(float(field))
            except ValueError:
                raise _fail(
                    where,
                    f"line {line_no}, attribute {names[index]!r}: value {field[:40]!r} is not a number; "
                    "expected a numeric value or '?'",
                ) from None
        lines.append(line_no)
    columns = {
        name: (np.asarray(column, dtype=np.float64) if is_numeric else np.asarray(column, dtype=object))
        for name, column, is_numeric in zip(names, values, numeric, strict=False)
    }
    return columns, np.asarray(lines, dtype=np.int64)
