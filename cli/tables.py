"""Tables whose cells are never cut, whatever the terminal's width.

Records (one dict per row, the first key labels the row) are printed as a table with one
column per field when that fits; else transposed, one column per record (a few versions side
by side); else one block of `field: value` lines per record. `--json` prints everything.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Record = dict[str, str]


def fits(console: Console, table: Table) -> bool:
    """True when every cell of `table` shows whole at this console's width."""
    unbounded = console.options.update_width(1_000_000)
    return Measurement.get(console, unbounded, table).maximum <= console.width


def _numeric(cells: Sequence[str]) -> bool:
    def number(cell: str) -> bool:
        head = cell.split(" ", 1)[0].rstrip("s%")
        try:
            float(head)
        except ValueError:
            return cell in ("", "-")
        return True

    return all(number(c) for c in cells)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        numeric = i > 0 and _numeric([row[i] for row in rows])
        table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # values are text, never markup
    return table


def print_records(console: Console, title: str, records: Sequence[Record]) -> None:
    """Print `records` in the widest layout that shows every cell whole."""
    if not records:
        console.print(f"{title}: nothing to show")
        return
    fields = list(records[0])
    wide = _table(title, fields, [[r.get(f, "") for f in fields] for r in records])
    if fits(console, wide):
        console.print(wide)
        return
    label = fields[0]
    header = [label, *(r[label] for r in records)]
    tall = _table(title, header, [[f, *(r.get(f, "") for r in records)] for f in fields[1:]])
    if fits(console, tall):
        console.print(tall)
        return
    console.print(f"[bold]{title}[/]", soft_wrap=True)
    for r in records:
        console.print(Text(r[label], style="bold"), soft_wrap=True)
        for f in fields[1:]:
            console.print(Text(f"  {f}: {r.get(f, '')}"), soft_wrap=True)
