"""Plain-text tables for the terminal: the one renderer behind plan/apply, status and facts."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def render_rows(rows: Sequence[Sequence[str]], right_aligned: Collection[int] = ()) -> str:
    """``rows`` (the header first) in columns two spaces apart, no trailing spaces.

    Columns are left-aligned unless their index is in ``right_aligned``
    (counts); the last column is never padded, so a long free-text column
    (a detail, an error) does not widen the others.
    """
    if not rows:
        return ""
    columns = max(len(row) for row in rows)
    widths = [max((len(row[i]) for row in rows if i < len(row)), default=0) for i in range(columns)]
    lines = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            if index == columns - 1:
                cells.append(cell)
            elif index in right_aligned:
                cells.append(cell.rjust(widths[index]))
            else:
                cells.append(cell.ljust(widths[index]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
