"""Reading the CSV files an instructor writes (the roster, the overrides), strictly.

A roster or an overrides file is typed or exported by hand, and a silent misreading changes grades. So a file is
read only if it is exactly what it should be: UTF-8 (a byte-order mark, as Excel's "CSV UTF-8" writes, is
allowed), a header row whose every column is known, and rows with as many cells as the header. Every problem is
a `TableError` (exit status 2) naming the file, the line and, where there is one, the column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from course.errors import UsageError
from course.safe_text import safe_text

MAX_TABLE_BYTES = 50 * 2**20


class TableError(UsageError):
    """A roster or overrides file that cannot be read as it is; the message names the file, line and column."""


@dataclass
class Cell:
    """A cell's text and where it is, for messages."""

    text: str
    line: int
    column: int
    name: str

    def where(self, path: Path) -> str:
        return f"{path}, line {self.line}, column {self.column} ({self.name})"


def read_table(path: Path, *, kind: str, columns: tuple[str, ...], required: tuple[str, ...],
               aliases: dict[str, str] | None = None) -> Iterator[dict[str, Cell]]:
    """The rows of `path`, each a {column: Cell} of the columns it has (blank rows skipped). `columns` are the
    known columns; `aliases` map other header names to them (e.g. student_id -> student); `required` must be
    there. `kind` names the file in messages ("roster")."""
    aliases = aliases or {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TableError(f"{path}: the {kind} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_TABLE_BYTES:
        raise TableError(f"{path}: the {kind} is larger than {MAX_TABLE_BYTES // 2**20} MB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TableError(f"{path}, line {line}: the {kind} is not UTF-8 text (in Excel, save it as "
                         "\"CSV UTF-8\")") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise TableError(f"{path}: the {kind} is empty (its first line names the columns: "
                             f"{', '.join(columns)})")
        names = _header(path, kind, header, columns, required, aliases)
        end = reader.line_num
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(names):
                raise TableError(f"{path}, line {start}: {len(cells)} cells, but the header has {len(names)} "
                                 f"({', '.join(names)})")
            yield {name: Cell(cell, start, index + 1, name) for index, (name, cell) in enumerate(zip(names, cells))}
    except csv.Error as exc:
        raise TableError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None


def _header(path: Path, kind: str, header: list[str], columns: tuple[str, ...], required: tuple[str, ...],
            aliases: dict[str, str]) -> list[str]:
    names: list[str] = []
    for index, raw in enumerate(header):
        name = raw.strip().lower()
        name = aliases.get(name, name)
        if name not in columns:
            known = ", ".join(columns)
            raise TableError(f"{path}, line 1, column {index + 1}: unknown column "
                             f"{safe_text(raw, 60, single_line=True)!r} (a {kind} has the columns {known})")
        if name in names:
            raise TableError(f"{path}, line 1, column {index + 1}: the column {name!r} appears twice")
        names.append(name)
    for name in required:
        if name not in names:
            raise TableError(f"{path}, line 1: the {kind} has no column {name!r} (its columns: "
                             f"{', '.join(names)}; a {kind} has {', '.join(columns)})")
    return names
