"""Render views: rich tables that fit the terminal without cutting a number, or markdown / CSV / JSON."""
from __future__ import annotations

import csv
import io
import json

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .views import View

FORMATS = ("rich", "markdown", "csv", "json", "html")


def render(views: list[View], fmt: str = "rich", console: Console | None = None) -> str | None:
    """rich: printed on `console` (stdout by default), each view split by columns to fit its width.
    The other formats are returned as one string (the caller prints it)."""
    if fmt == "rich":
        console = console or Console()
        for v in views:
            parts = fit(v, console.width)
            for i, part in enumerate(parts):
                title = v.title + (f" ({i + 1}/{len(parts)})" if len(parts) > 1 else "")
                console.print(f"[bold]{escape(title)}[/bold]")     # title and notes wrap at the terminal's width
                console.print(rich_table(part))
            for note in v.notes:
                console.print(escape(note), style="dim")
            console.print()
        return None
    if fmt == "markdown":
        return "\n".join(markdown(v) for v in views)
    if fmt == "csv":
        return "\n".join(as_csv(v) for v in views)
    if fmt == "html":        # one self-contained page (the report's renderer)
        from .html import render_html
        return render_html(views)
    if fmt == "json":
        return json.dumps([v.as_dict() for v in views], indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


# --- rich ---------------------------------------------------------------------------------------

def rich_table(v: View) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(v.columns):
        # fold, never ellipsize: a number is wrapped onto a second line rather than cut
        t.add_column(c, justify="left" if i < v.key_columns else "right", overflow="fold")
    for row in v.rows:
        t.add_row(*row)
    return t


def width_of(columns: list[str], rows: list[list[str]]) -> list[int]:
    return [max(len(line) for cell in [c, *[r[i] for r in rows]] for line in str(cell).split("\n"))
            for i, c in enumerate(columns)]


def fit(v: View, width: int) -> list[View]:
    """The view itself if it fits `width`, else parts of it with the key columns repeated in each
    (a pivot wraps by defense)."""
    widths = width_of(v.columns, v.rows)
    gap = 2                                    # SIMPLE_HEAD: one space of padding either side
    if sum(widths) + gap * len(widths) <= width:
        return [v]
    k = v.key_columns
    fixed = sum(widths[:k]) + gap * k
    rest = list(range(k, len(v.columns)))
    for n_parts in range(2, len(rest) + 1):          # the fewest parts of near-equal size that fit
        size = -(-len(rest) // n_parts)
        parts = [rest[i:i + size] for i in range(0, len(rest), size)]
        if all(fixed + sum(widths[i] + gap for i in part) <= width for part in parts):
            break
    greedy, used = [[]], fixed                       # one wide column must not force a column a part
    for i in rest:
        if greedy[-1] and used + widths[i] + gap > width:
            greedy.append([])
            used = fixed
        greedy[-1].append(i)
        used += widths[i] + gap
    parts = greedy if len(greedy) < len(parts) else parts
    keep = [list(range(k)) + part for part in parts]
    return [View(v.title, [v.columns[i] for i in cols], [[r[i] for i in cols] for r in v.rows], [], k) for cols in keep]


# --- text formats ---------------------------------------------------------------------------------

def _one_line(cell: str) -> str:
    """Markdown / CSV cells are one line: '68.8\\n66.0–71.5' becomes '68.8 (66.0–71.5)'."""
    first, *rest = str(cell).split("\n")
    return first + "".join(f" ({r})" for r in rest)


def markdown(v: View) -> str:
    esc = lambda s: _one_line(s).replace("|", "\\|")
    lines = [f"**{v.title}**", "", "| " + " | ".join(esc(c) for c in v.columns) + " |",
             "|" + "|".join("---" if i < v.key_columns else "---:" for i in range(len(v.columns))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in v.rows]
    if v.notes:
        lines += [""] + [f"{n}  " for n in v.notes]
    return "\n".join(lines) + "\n"


def as_csv(v: View) -> str:
    buf = io.StringIO()
    buf.write(f"# {v.title}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(v.columns)
    for row in v.rows:
        w.writerow([_one_line(c) for c in row])
    return buf.getvalue()
