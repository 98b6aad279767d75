"""Readers of the interaction logs publishers ship, into columns: delimited text (``::``,
tab or pipe separated, any encoding) on ``pyarrow.csv``, and JSON lines (optionally gzipped) on
``pyarrow.json``, both with malformed lines reported by file and line number or skipped and
counted (``on_bad_line``), never dropped silently.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

__all__ = ["iter_literal_lines", "read_delimited", "read_int_columns", "read_json_lines"]

log = logging.getLogger(__name__)

OnBadLine = Literal["error", "skip"]
#: Stands in for a multi-character separator (``::``): pyarrow splits on one character only.
_UNIT_SEPARATOR = "\x1f"


def _open_bytes(path: str) -> bytes:
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as handle:
        return handle.read()


def read_delimited(
    path: str,
    separator: str,
    names: Optional[Sequence[str]],
    types: dict[str, pa.DataType],
    on_bad_line: OnBadLine = "error",
    encoding: str = "utf-8",
    quoting: bool = False,
) -> pa.Table:
    """A delimited text file as a table.

    Args:
        path: the file (``.gz`` is decompressed).
        separator: the field separator; may be several characters (MovieLens' ``::``).
        names: the column names, one per field, for a file without a header; ``None`` reads
            them from the first line.
        types: the types of the columns to convert (others are inferred, or strings).
        on_bad_line: a line with another number of fields raises (``"error"``, naming file and
            line) or is skipped and counted in a warning (``"skip"``).
        encoding: the file's encoding (MovieLens' title files are ISO-8859-1).
        quoting: honour ``"`` quotes (CSV tables); off for logs whose titles hold quotes.

    Raises:
        ValueError: a malformed line under ``"error"``, or a field that does not convert.
    """
    data, written = _open_bytes(path), separator
    if len(separator) > 1:
        data = data.replace(separator.encode(encoding), _UNIT_SEPARATOR.encode(encoding))
        separator = _UNIT_SEPARATOR
    bad: list[pa_csv.InvalidRow] = []

    def handle(row: pa_csv.InvalidRow) -> str:
        bad.append(row)
        return "error" if on_bad_line == "error" else "skip"

    def read(threads: bool) -> pa.Table:
        return pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(column_names=None if names is None else list(names), encoding=encoding,
                                            use_threads=threads),
            parse_options=pa_csv.ParseOptions(delimiter=separator, quote_char='"' if quoting else False,
                                              invalid_row_handler=handle),
            convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )

    try:
        # Threaded first; pyarrow knows line numbers only single-threaded, so a bad line is
        # located by a second, single-threaded read (the error path only).
        table = read(threads=True)
    except pa.ArrowInvalid as error:
        if not bad:
            raise ValueError(f"{path}: {error}") from None
        bad.clear()
        try:
            read(threads=False)
        except pa.ArrowInvalid:
            pass
        row = bad[0]
        text = row.text.replace(_UNIT_SEPARATOR, written)[:120]
        raise ValueError(
            f"{path}, line {row.number}: expected {row.expected_columns} fields separated by {written!r}, "
            f"got {row.actual_columns}: {text!r} (on_bad_line='skip' skips such lines)"
        ) from None
    if bad:
        where = f" (first: line {bad[0].number})" if bad[0].number is not None else ""
        log.warning("skipped %d malformed line(s) in %s%s", len(bad), path, where)
    return table


def read_json_lines(path: str, fields: dict[str, pa.DataType], on_bad_line: OnBadLine = "error") -> pa.Table:
    """The ``fields`` of a JSON-lines file (one object a line; ``.gz`` is decompressed).

    Other keys are ignored. A line that is not a JSON object with the fields' types raises
    naming the file and line (``"error"``), or is skipped and counted (``"skip"``).
    """
    data = _open_bytes(path)
    schema = pa.schema(list(fields.items()))
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pa_json.read_json(io.BytesIO(data), parse_options=options)
    except pa.ArrowInvalid as error:
        # pyarrow names no line: find the bad ones with the standard parser (error path only).
        lines = data.decode("utf-8", errors="replace").splitlines()
        bad = [n for n, line in enumerate(lines, start=1) if line.strip() and not _valid_object(line, fields)]
        if not bad:
            raise ValueError(f"{path}: {error}") from None
        if on_bad_line == "error":
            raise ValueError(
                f"{path}, line {bad[0]}: not a JSON object with {', '.join(fields)} of the expected types "
                f"({len(bad)} such line(s); on_bad_line='skip' skips them)"
            ) from None
        keep = set(range(1, len(lines) + 1)) - set(bad)
        good = "\n".join(line for n, line in enumerate(lines, start=1) if n in keep and line.strip())
        log.warning("skipped %d malformed line(s) in %s (first: line %d)", len(bad), path, bad[0])
        return pa_json.read_json(io.BytesIO(good.encode()), parse_options=options)


def _valid_object(line: str, fields: dict[str, pa.DataType]) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    for name, kind in fields.items():
        value = record.get(name)
        if value is None:
            continue
        if pa.types.is_integer(kind) and not (isinstance(value, int) and not isinstance(value, bool)):
            return False
        if pa.types.is_string(kind) and not isinstance(value, str):
            return False
    return True


def iter_literal_lines(path: str, on_bad_line: OnBadLine = "error",
                       parse: Optional[Callable[[str], object]] = None) -> Iterator[dict]:
    """The dict on each line of ``path``: JSON, or a Python literal (the 2014 Amazon meta files
    write ``{'asin': ...}``), parsed with :func:`ast.literal_eval`, which evaluates literals only
    (never code; never ``eval``).

    Args:
        path: the file (``.gz`` is decompressed).
        on_bad_line: a line that is neither raises naming file and line, or is skipped and counted.
        parse: the parser to try first (default :func:`json.loads`).
    """
    parse = parse or json.loads
    skipped = 0
    opener = gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")
    with opener as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = parse(line)
            except ValueError:
                try:
                    record = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    record = None
            if not isinstance(record, dict):
                if on_bad_line == "error":
                    raise ValueError(f"{path}, line {number}: not a JSON object or Python dict literal: {line[:120]!r}")
                skipped += 1
                continue
            yield record
    if skipped:
        log.warning("skipped %d malformed line(s) in %s", skipped, path)


def _bad(path: str, lineno: int, what: str, policy: str, counter: list[int]) -> None:
    if policy == "error":
        raise ValueError(f"{path}:{lineno}: {what}")
    counter[0] += 1


def _report_skips(path: str, count: int) -> None:
    if count:
        log.warning("skipped %d malformed line(s) in %s", count, path)


def read_int_columns(
    path: str,
    separator: str,
    names: Sequence[str],
    int_columns: Sequence[str],
    *,
    header: bool,
    on_bad_line: OnBadLine = "error",
) -> pa.Table:
    """A delimited log whose ``int_columns`` hold integers (ids, unix times), on :func:`read_delimited`.

    Args:
        path: the file.
        separator: the field separator.
        names: the expected column names, one per field.
        int_columns: the columns parsed as int64; the others stay strings.
        header: the first line is a header and must equal ``names``; else there is none.
        on_bad_line: a line with another number of fields or a non-integer in an int column
            raises naming file and line (``"error"``), or is skipped and counted in a warning
            (``"skip"``).

    Raises:
        ValueError: a wrong header, or a malformed line under ``"error"``.
    """
    table = read_delimited(path, separator, None if header else names, {name: pa.string() for name in names}, on_bad_line)
    if header and table.column_names != list(names):
        raise ValueError(f"{path}, line 1: expected the header {list(names)!r}, got {table.column_names!r}")
    trimmed = {name: pc.utf8_trim_whitespace(table[name]) for name in int_columns}
    valid = None
    for name in int_columns:
        integer = pc.match_substring_regex(trimmed[name], r"^[+-]?[0-9]+$")
        valid = integer if valid is None else pc.and_(valid, integer)
    if valid is not None and not pc.all(valid).as_py():
        bad_rows = np.flatnonzero(~valid.to_numpy(zero_copy_only=False))
        if on_bad_line == "error":
            # Under "error" no line was skipped: data row r is the r-th non-empty line after the header.
            line = _data_line(path, int(bad_rows[0]), header)
            raise ValueError(f"{path}, line {line}: expected integers in {list(int_columns)} "
                             f"(on_bad_line='skip' skips such lines)")
        table = table.filter(valid)
        trimmed = {name: values.filter(valid) for name, values in trimmed.items()}
        _report_skips(path, len(bad_rows))
    return pa.table({name: trimmed[name].cast(pa.int64()) if name in trimmed else table[name] for name in names})


def _data_line(path: str, row: int, header: bool) -> int:
    """The 1-based line number of data row ``row`` (pyarrow skips empty lines)."""
    seen = -1
    with (gzip.open(path, "rt", encoding="utf-8", errors="replace") if path.endswith(".gz")
          else open(path, encoding="utf-8", errors="replace")) as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1 and header or not line.strip("\r\n"):
                continue
            seen += 1
            if seen == row:
                return number
    return number
