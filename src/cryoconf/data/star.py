"""STAR files: a strict tokenizer/parser and a writer for RELION-style tables.

Why not ``starfile`` for reading: it fills a row with too few fields with NaN
and cannot say which line of the file is wrong. This parser keeps every value
as a string together with its line number, so a bad value is reported as
"file, block, row, line, column". Values are converted (and checked) column by
column with :meth:`StarTable.floats` / :meth:`StarTable.ints`.

Supported: ``data_<name>`` blocks, ``loop_`` tables (labels may carry ``#n``),
key/value blocks (``_rlnKey value``, read as a one-row table), full-line
comments, single/double-quoted values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from cryoconf.errors import InputError
from cryoconf.atomic_write import atomic_path

__all__ = ["StarTable", "read_star", "write_star", "format_value_column"]


@dataclass
class StarTable:
    """One table of a STAR file: column labels (without ``_``) and string rows."""

    block: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based line number of each row
    source: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def where(self, i: int) -> str:
        """Words for row ``i`` (0-based): block, 1-based row and line number."""
        return f"data_{self.block} row {i + 1} (line {self.lines[i]})"

    def strings(self, column: str) -> np.ndarray:
        j = self.columns.index(column)
        return np.array([r[j] for r in self.rows], dtype=object)

    def floats(self, column: str, *, finite: bool = True) -> np.ndarray:
        """Column as float64; non-numeric (or, with ``finite``, NaN/inf) values raise InputError."""
        j = self.columns.index(column)
        values = [r[j] for r in self.rows]
        try:
            out = np.array(values, dtype=np.float64)
        except ValueError:
            for i, v in enumerate(values):
                try:
                    float(v)
                except ValueError:
                    raise InputError(
                        f"{self.source}: {self.where(i)}: column _{column} has non-numeric value {v!r}; "
                        "fix or remove that row"
                    ) from None
            raise  # pragma: no cover
        if finite and not np.isfinite(out).all():
            i = int(np.flatnonzero(~np.isfinite(out))[0])
            raise InputError(
                f"{self.source}: {self.where(i)}: column _{column} is {values[i]!r} (NaN or infinite); "
                "fix or remove that row"
            )
        return out

    def ints(self, column: str) -> np.ndarray:
        out = self.floats(column)
        bad = np.flatnonzero(out != np.round(out))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{self.source}: {self.where(i)}: column _{column} must be an integer, got {self.rows[i][self.columns.index(column)]!r}"
            )
        return out.astype(np.int64)


_TOKEN = re.compile(r"""\"([^\"]*)\"(?=\s|$)|'([^']*)'(?=\s|$)|(\S+)""")


def _split(line: str, path: str, lineno: int) -> list[str]:
    """Whitespace-separated tokens; '…' or "…" quote a value with spaces (no escapes in STAR)."""
    if '"' not in line and "'" not in line:
        return line.split()
    return [m.group(1) if m.group(1) is not None else m.group(2) if m.group(2) is not None else m.group(3)
            for m in _TOKEN.finditer(line)]


def read_star(path: str | os.PathLike) -> dict[str, StarTable]:
    """Parse a STAR file into ``{block name: StarTable}`` (names without ``data_``).

    Raises InputError (naming file and line) for a missing/unreadable file,
    a row whose number of fields differs from the number of labels (a
    truncated or corrupted file), duplicate labels, or values outside a table.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such STAR file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as a text STAR file ({exc})") from None

    tables: dict[str, StarTable] = {}
    block: str | None = None
    table: StarTable | None = None
    mode = "none"  # none | pairs | labels | rows
    label_line = 0

    def finish():
        nonlocal table
        if table is not None:
            name = table.block
            k = 2
            while name in tables:  # a second table in one block
                name = f"{table.block}#{k}"
                k += 1
            tables[name] = table
        table = None

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            finish()
            block = line[5:].split()[0] if line[5:].strip() else ""
            mode = "none"
            continue
        if block is None:
            raise InputError(f"{path}: line {lineno}: content before the first data_ block; is this a STAR file?")
        if line.startswith("loop_"):
            finish()
            table = StarTable(block, [], source=path)
            mode = "labels"
            label_line = lineno
            continue
        if line.startswith("_"):
            tokens = _split(line, path, lineno)
            label = tokens[0][1:]
            if mode == "labels":
                if label in table.columns:
                    raise InputError(f"{path}: line {lineno}: duplicate column _{label} in data_{block}")
                table.columns.append(label)
                continue
            if mode == "rows":
                raise InputError(
                    f"{path}: line {lineno}: label _{label} after the rows of a loop_ in data_{block}; "
                    "the file is malformed"
                )
            # key/value pair block
            if mode != "pairs":
                finish()
                table = StarTable(block, [], [[]], [lineno], source=path)
                mode = "pairs"
            if len(tokens) != 2 or tokens[1].startswith("#"):
                raise InputError(f"{path}: line {lineno}: expected '_label value', got {line!r}")
            if label in table.columns:
                raise InputError(f"{path}: line {lineno}: duplicate key _{label} in data_{block}")
            table.columns.append(label)
            table.rows[0].append(tokens[1])
            continue
        # a data row
        if mode not in ("labels", "rows"):
            raise InputError(f"{path}: line {lineno}: value {line[:40]!r} outside a loop_ table; the file is malformed")
        if mode == "labels" and not table.columns:
            raise InputError(f"{path}: line {label_line}: loop_ without column labels")
        mode = "rows"
        tokens = _split(line, path, lineno)
        if len(tokens) != len(table.columns):
            raise InputError(
                f"{path}: line {lineno} (data_{block} row {len(table.rows) + 1}): {len(tokens)} fields but "
                f"{len(table.columns)} column labels; the file is truncated or the row is corrupted"
            )
        table.rows.append(tokens)
        table.lines.append(lineno)
    finish()
    if not tables:
        raise InputError(f"{path}: no data_ table found; is this a STAR file?")
    return tables


def format_value_column(values) -> list[str]:
    """Format a column for a STAR file: ints as ints, floats with 10 significant digits."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return [str(int(v)) for v in arr]
    if arr.dtype.kind == "f":
        return [f"{v:.10g}" for v in arr.tolist()]
    out = []
    for v in arr.tolist():
        s = v.decode() if isinstance(v, bytes) else str(v)
        if s == "" or any(c.isspace() for c in s) or s.startswith(("_", "#", "data_", "loop_", "'", '"')):
            s = '"' + s.replace('"', "'") + '"'
        out.append(s)
    return out


def write_star(path: str | os.PathLike, blocks: list[tuple[str, dict]], header: str = "") -> None:
    """Write ``blocks`` = [(name, {label: column}), ...] as loop_ tables.

    Labels are given without the leading ``_``. Writes to a temporary file and
    renames, so a crash never leaves a half-written STAR file.
    """
    path = os.fspath(path)
    parts = []
    for name, columns in blocks:
        if header:  # RELION 3.1 repeats "# version 30001" before every block
            parts.append(header.rstrip("\n") + "\n\n")
        parts.append(f"data_{name}\n\nloop_\n")
        labels = list(columns)
        for k, label in enumerate(labels, start=1):
            parts.append(f"_{label} #{k}\n")
        cols = [format_value_column(columns[label]) for label in labels]
        if cols:
            parts.append("".join(" ".join(row) + "\n" for row in zip(*cols)))
        parts.append("\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts), encoding="utf-8")
