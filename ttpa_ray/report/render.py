"""Rendering of the run report (:mod:`ttpa_ray.report.build` builds its content): the report model
(tables, figures, notes, data cards and pair cards in sections), PNG plots, and the HTML and
Markdown writers.

Plot functions take plain data and return PNG bytes. Figures are built on
:class:`matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``: no global
backend switch, no window, no state shared between calls. Colours are fixed per role (base
grey, trained blue, variants after it; chosen green, rejected red) so figures read the same
from run to run. The HTML page is self-contained: inline CSS, PNGs as ``data:`` URIs, no
script, no external reference; the Markdown links ``<name>.png`` files next to it.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

# --------------------------------------------------------------------------- report model


@dataclass
class Table:
    """Cells are preformatted strings; a column headed ``Δ ...`` holds deltas against base,
    shown green when better (higher, or lower with ``lower_is_better``) and red when worse."""

    title: str
    header: list[str]
    rows: list[list[str]]
    lower_is_better: bool = False

    def cell(self, row: str, col: str) -> str:
        """The cell in the row whose first cell is ``row``."""
        return next(r[self.header.index(col)] for r in self.rows if r[0] == row)


@dataclass
class Figure:
    name: str  # file stem: <name>.png
    caption: str
    png: bytes


@dataclass
class Note:
    text: str


@dataclass
class Call:
    name: str
    arguments: str  # JSON text, possibly clipped


@dataclass
class Turn:
    """One user turn of an example: the query, per assistant message its calls (a parallel
    step's calls share one message; none: a text-only turn), and the final answer."""

    query: str
    steps: list[list[Call]]
    answer: str


@dataclass
class Example:
    """One constructed instance as the data card shows it."""

    kind: str
    instance_id: int
    domain: str
    tools: list[tuple[str, bool]]  # offered tool name, used by a gold call
    turns: list[Turn]


@dataclass
class DataCard:
    title: str
    examples: list[Example]


@dataclass
class PairSide:
    """One side of a pair after the text it shares with the other side."""

    divergence: str  # the divergence token ("": this side ends where the other goes on)
    rest: str  # the text after it, possibly clipped
    score: float | None  # ESM score
    errors: list[str]  # ESM error codes


@dataclass
class PairExample:
    """One preference pair as the pair card shows it: chosen vs rejected after ``shared``."""

    kind: str  # branch kind of the rejected side (name, key, value, call-or-not, sample)
    pair_id: int
    instance_id: int | None
    turn_index: int | None
    chosen_is_gold: bool | None
    divergence_index: int | None  # first token where the sides differ (pairs.parquet)
    shared: str  # the text both sides start with, possibly clipped at its start
    chosen: PairSide
    rejected: PairSide


@dataclass
class PairCard:
    title: str
    examples: list[PairExample]


Block = Table | Figure | Note | DataCard | PairCard


@dataclass
class Section:
    title: str
    blocks: list[Block]


@dataclass
class Report:
    """What both writers render: a title, key facts, then sections of blocks in order."""

    title: str
    facts: list[tuple[str, str]]
    sections: list[Section]

    def tables(self) -> dict[str, Table]:
        return {b.title: b for s in self.sections for b in s.blocks if isinstance(b, Table)}

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def notes(self) -> list[str]:
        return [b.text for s in self.sections for b in s.blocks if isinstance(b, Note)]

    def examples(self) -> list[Example]:
        return [e for s in self.sections for b in s.blocks if isinstance(b, DataCard) for e in b.examples]

    def pair_examples(self) -> list[PairExample]:
        return [e for s in self.sections for b in s.blocks if isinstance(b, PairCard) for e in b.examples]


# --------------------------------------------------------------------------- plots

BASE_COLOUR = "#8c8c8c"
MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
CHOSEN, REJECTED = "#2ca02c", "#d62728"
_DPI = 100


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: "–" for None, floats to ``digits`` places (whole above 1000)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e3 else f"{v:.0f}"
    return str(v)


def model_colour(label: str, index: int) -> str:
    """``base`` is grey; the others take the palette in order (``index`` counts non-base models)."""
    return BASE_COLOUR if label == "base" else MODEL_COLOURS[index % len(MODEL_COLOURS)]


def _new(width: float, height: float, ncols: int = 1) -> tuple[MplFigure, list]:
    fig = MplFigure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes)


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    return buf.getvalue()


def train_curves(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> bytes:
    """Loss and reward margin per optimizer step (``metrics.jsonl`` rows), one line per run."""
    fig, (loss_ax, margin_ax) = _new(10, 3.6, ncols=2)
    for k, (label, steps) in enumerate(runs.items()):
        x = [s["step"] for s in steps]
        style = {"color": model_colour(label, k), "marker": "o" if len(x) <= 30 else None, "markersize": 4,
                 "label": label}
        loss_ax.plot(x, [s["loss"] for s in steps], **style)
        margin_ax.plot(x, [s["rewards/margins"] for s in steps], **style)
    loss_ax.axhline(np.log(2), color="#999999", linestyle=":", linewidth=1, label="ln 2 (policy = reference)")
    margin_ax.axhline(0.0, color="#999999", linestyle=":", linewidth=1)
    for ax, title in ((loss_ax, "loss"), (margin_ax, "reward margin (chosen - rejected)")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=8, frameon=False, loc="best")
    return _png(fig)


def esm_histograms(runs: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> bytes:
    """ESM score of the chosen vs the rejected side of every pair, one panel per run."""
    fig, axes = _new(min(5.0 * len(runs), 15.0) if len(runs) > 1 else 7.0, 3.4, ncols=len(runs))
    bins = np.linspace(0.0, 1.0, 21)
    for ax, (label, (chosen, rejected)) in zip(axes, runs.items()):
        ax.hist([list(chosen), list(rejected)], bins=bins, color=[CHOSEN, REJECTED],
                label=[f"chosen (n={len(chosen)})", f"rejected (n={len(rejected)})"])
        ax.set_title(f"{label}: ESM score of pair sides", fontsize=11)
        ax.set_xlabel("ESM score")
        ax.set_xlim(0, 1)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, frameon=False, loc="upper center")
    axes[0].set_ylabel("pairs")
    fig.get_layout_engine().set(wspace=0.08)  # panels' 1.0 and 0.0 tick labels apart
    return _png(fig)


Intervals = Mapping[str, Sequence["Sequence[float] | None"]]


def grouped_bars(groups: Sequence[str], values: Mapping[str, Sequence[float | None]], ylabel: str,
                 title: str, share: bool = True, intervals: Intervals | None = None) -> bytes:
    """One cluster of bars per group, one bar per model (None: no bar, e.g. an empty category).
    ``share``: values are in [0, 1] and each bar is labelled with its value. ``intervals``: per
    model, a (low, high) interval per group drawn as an error bar (None: none)."""
    return _png(grouped_bars_figure(groups, values, ylabel, title, share, intervals))


def grouped_bars_figure(groups: Sequence[str], values: Mapping[str, Sequence[float | None]], ylabel: str,
                        title: str, share: bool = True, intervals: Intervals | None = None) -> MplFigure:
    """The figure behind ``grouped_bars``. Groups whose labels would not fit side by side under
    the bars (e.g. all ESM error codes) are drawn as horizontal bars, labels on the left."""
    width = max(4.5, min(11.0, 1.5 + 0.42 * len(groups) * max(2, len(values))))
    horizontal = sum(len(g) for g in groups) * 0.075 > width - 1.5  # ~0.075 in per character at 9 pt
    if horizontal:
        width = 8.0
    fig, (ax,) = _new(width, max(3.6, 1.2 + 0.22 * len(groups) * max(1, len(values))) if horizontal else 3.6)
    if horizontal:
        ax.grid(False, axis="y")
        ax.grid(True, axis="x", alpha=0.3)
    x = np.arange(len(groups))
    bar = min(0.8 / max(1, len(values)), 0.3)
    others = 0
    for k, (label, vals) in enumerate(values.items()):
        colour = model_colour(label, others)
        others += label != "base"
        pos = x + bar * (k + 0.5 - len(values) / 2)
        heights = [np.nan if v is None else v for v in vals]
        draw = ax.barh if horizontal else ax.bar
        ci = (intervals or {}).get(label)
        err = None
        if ci and any(c for c in ci):  # asymmetric error bars: value - low, high - value
            err = np.array([[0.0, 0.0] if c is None or v is None else [max(0.0, v - c[0]), max(0.0, c[1] - v)]
                            for v, c in zip(vals, ci)]).T
        rects = draw(pos, heights, bar * 0.95, color=colour, label=label,
                     **({"xerr" if horizontal else "yerr": err, "error_kw": {"elinewidth": 0.8, "capsize": 2,
                                                                             "ecolor": "#444444"}}
                        if err is not None else {}))
        ax.bar_label(rects, labels=["" if v is None else (f"{v:.2f}" if share else f"{v:g}") for v in vals],
                     fontsize=7, padding=1)
    group_axis, value_axis = (ax.yaxis, ax.xaxis) if horizontal else (ax.xaxis, ax.yaxis)
    labels = list(groups) if horizontal else [g.replace(" ", "\n", 1) for g in groups]  # "BFCL\nsimple"
    group_axis.set_ticks(x, labels, fontsize=9)
    (ax.set_ylim(len(groups) - 0.4, -0.6) if horizontal else ax.set_xlim(-0.6, len(groups) - 0.4))  # first on top
    if share:  # headroom above 1.0 for the bar labels and the legend
        (ax.set_xlim if horizontal else ax.set_ylim)(0, 1.3)
        value_axis.set_ticks(np.linspace(0, 1, 6))
    else:
        value_axis.get_major_locator().set_params(integer=True)
        ax.margins(**{"x" if horizontal else "y": 0.15})
    value_axis.set_label_text(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, frameon=False, ncols=min(4, len(values)), loc="lower right" if horizontal else "upper left")
    return fig


def stage_timings(runs: Mapping[str, Mapping[str, float]]) -> bytes:
    """Wall-clock seconds per stage (horizontal bars), one bar per run in each stage."""
    stages = list(dict.fromkeys(s for secs in runs.values() for s in secs))
    fig, (ax,) = _new(8, 0.6 + 0.38 * len(stages) * max(1, len(runs)))
    ax.grid(False)
    ax.grid(True, axis="x", alpha=0.3)
    y = np.arange(len(stages))
    bar = 0.8 / max(1, len(runs))
    for k, (label, secs) in enumerate(runs.items()):
        vals = [secs.get(s, np.nan) for s in stages]
        rects = ax.barh(y - 0.4 + bar * (k + 0.5), vals, bar * 0.95, color=MODEL_COLOURS[k % len(MODEL_COLOURS)],
                        label=label)
        ax.bar_label(rects, labels=["" if np.isnan(v) else f"{v:.0f} s" for v in vals], fontsize=7, padding=2)
    ax.set_yticks(y, stages)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel("seconds")
    ax.set_title("stage wall-clock time", fontsize=11)
    if len(runs) > 1:
        ax.legend(fontsize=8, frameon=False)
    return _png(fig)


# --------------------------------------------------------------------------- writers

_CSS = """
body{margin:0;background:#f6f7f9;color:#1d2330;font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",
 Helvetica,Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 12px}h2{font-size:19px;margin:36px 0 12px;padding-bottom:4px;
 border-bottom:2px solid #e3e6ec}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0 0 12px;color:#444}
dl.facts dt{font-weight:600}dl.facts dd{margin:0;word-break:break-all}
nav{margin:8px 0 4px}nav a{margin-right:14px;color:#1f5fa8;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:0 0 6px;color:#333}
th,td{border:1px solid #dde1e7;padding:4px 9px;vertical-align:top}
th{background:#eef1f5;text-align:left;white-space:nowrap}td:first-child{white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
td.num{text-align:right;white-space:nowrap}td.pos{color:#11772d;font-weight:600}td.neg{color:#b3261e;font-weight:600}
td{max-width:420px}
figure{margin:8px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #e3e6ec}
figcaption{font-size:12px;color:#555;margin-top:4px}
p.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:6px 0 12px;flex-basis:100%}
div.flow{display:flex;flex-wrap:wrap;gap:0 32px;align-items:flex-start}
div.card{flex-basis:100%;display:flex;flex-wrap:wrap;gap:12px 16px;align-items:flex-start;margin:0 0 20px}
div.card h3{flex-basis:100%;font-size:13px;margin:0;color:#333}
div.example{flex:0 1 540px;min-width:0;border:1px solid #dde1e7;border-radius:4px;padding:8px 12px}
div.example h4{font-size:14px;margin:0 0 6px}div.example h4 span{font-weight:400;color:#666;font-size:12px}
dl.card{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:4px 12px;margin:0;font-size:13px}
dl.card dt{font-weight:600;color:#444}dl.card dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
dl.card code{font:12px/1.4 "DejaVu Sans Mono",Menlo,Consolas,monospace;background:#f3f5f8;padding:1px 4px;
 border-radius:3px}
dl.card code.used{background:#e3f3e6;color:#11772d;font-weight:600}dl.card div.call{margin:0 0 3px}
div.pair{flex-basis:100%;min-width:0;box-sizing:border-box;border:1px solid #dde1e7;border-radius:4px;
 padding:8px 12px}
div.pair h4{font-size:14px;margin:0 0 6px}div.pair h4 span{font-weight:400;color:#666;font-size:12px}
div.sides{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}
div.side{min-width:0;border-top:3px solid #2ca02c;padding-top:4px}div.side.rejected{border-top-color:#d62728}
div.side p{margin:0 0 4px;font-size:13px}div.side code{font:12px/1.4 "DejaVu Sans Mono",Menlo,Consolas,monospace;
 background:#fdecea;color:#b3261e;padding:1px 4px;border-radius:3px}
pre.completion{margin:0;white-space:pre-wrap;overflow-wrap:anywhere;font:12px/1.45 "DejaVu Sans Mono",Menlo,
 Consolas,monospace;background:#f3f5f8;padding:6px 8px;border-radius:3px}
pre.completion mark{background:#ffd54f;color:#1d2330;font-weight:700;outline:1px solid #e0a800}
pre.completion mark.end{background:#eee;color:#666;font-weight:400;outline:1px dashed #999}
"""
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def _numeric_columns(t: Table) -> list[bool]:
    """Columns whose cells are all numbers (or blank / "–"): right-aligned."""
    return [any(_NUMBER.match(r[k]) for r in t.rows) and all(_NUMBER.match(r[k]) or r[k] in ("", "–") for r in t.rows)
            for k in range(len(t.header))]


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # IHDR width, height


def _esc(text: str) -> str:
    """Text content (quotes stay as typed; attributes use html.escape with quote=True)."""
    return html.escape(text, quote=False)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in t.header)
    body = []
    numeric = _numeric_columns(t)
    for row in t.rows:
        cells = []
        for h, v, num in zip(t.header, row, numeric):
            cls = "num" if num else ""
            if h.startswith("Δ") and v not in ("–", "") and float(v) != 0:
                cls += " pos" if (float(v) > 0) != t.lower_is_better else " neg"
            cells.append(f'<td class="{cls.strip()}">{_esc(v)}</td>' if cls else f"<td>{_esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table><caption>{_esc(t.title)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _turn_rows(e: Example) -> list[tuple[str, str | list[Call]]]:
    """(label, text or calls) per line of an example after its tools, for both writers."""
    rows: list[tuple[str, str | list[Call]]] = []
    for t, turn in enumerate(e.turns, 1):
        turn_of = f"turn {t}: " if len(e.turns) > 1 else ""
        rows.append((f"{turn_of}user", turn.query))
        if not turn.steps:
            rows.append((f"{turn_of}calls", "none (answered in text)"))
        for s, step in enumerate(turn.steps, 1):
            rows.append((f"{turn_of}calls" + (f" {s}/{len(turn.steps)}" if len(turn.steps) > 1 else ""), step))
        rows.append((f"{turn_of}answer", turn.answer))
    return rows


def _example_title(e: Example) -> str:
    return f"instance {e.instance_id}" + (f" · domain {e.domain}" if e.domain else "")


def _html_card(card: DataCard) -> str:
    out = [f'<div class="card"><h3>{_esc(card.title)}</h3>']
    for e in card.examples:
        tools = " ".join(f'<code class="used">✓ {_esc(n)}</code>' if used else f"<code>{_esc(n)}</code>"
                         for n, used in e.tools)
        lines = [f"<dt>tools</dt><dd>{tools or '–'}</dd>"]
        for label, value in _turn_rows(e):
            cell = ((_esc(value) or "–") if isinstance(value, str) else
                    "".join(f'<div class="call"><code><b>{_esc(c.name)}</b> {_esc(c.arguments)}</code></div>'
                            for c in value))
            lines.append(f"<dt>{_esc(label)}</dt><dd>{cell}</dd>")
        out.append(f'<div class="example"><h4>{_esc(e.kind)} <span>{_esc(_example_title(e))}</span></h4>'
                   f'<dl class="card">{"".join(lines)}</dl></div>')
    out.append("</div>")
    return "".join(out)


def _pair_facts(e: PairExample) -> str:
    """The line under a pair's kind: where it comes from, where it diverges, who is chosen."""
    facts = [f"pair {e.pair_id}"]
    if e.instance_id is not None:
        facts.append(f"instance {e.instance_id}" + (f", turn {e.turn_index}" if e.turn_index is not None else ""))
    if e.divergence_index is not None:
        facts.append(f"divergence token #{e.divergence_index}")
    if e.chosen_is_gold is not None:
        facts.append("chosen is the gold" if e.chosen_is_gold else "chosen is a sampled candidate")
    return " · ".join(facts)


def _side_facts(s: PairSide) -> tuple[str, str]:
    return f"ESM {fmt(s.score)}", ", ".join(s.errors) or "none"


_END = "∎"
"""Shown for the divergence token of a side that ends where the other goes on."""


def _html_pair_card(card: PairCard) -> str:
    out = [f'<div class="card"><h3>{_esc(card.title)}</h3>']
    for e in card.examples:
        sides = []
        for name, s in (("chosen", e.chosen), ("rejected", e.rejected)):
            score, _ = _side_facts(s)
            codes = " ".join(f"<code>{_esc(c)}</code>" for c in s.errors) or "none"
            mark = (f"<mark>{_esc(s.divergence)}</mark>" if s.divergence else
                    f'<mark class="end" title="this side ends here">{_END}</mark>')
            sides.append(f'<div class="side {name}"><p><b>{name}</b> · {_esc(score)} · errors: {codes}</p>'
                         f'<pre class="completion">{_esc(e.shared)}{mark}{_esc(s.rest)}</pre></div>')
        out.append(f'<div class="pair"><h4>{_esc(e.kind)} <span>{_esc(_pair_facts(e))}</span></h4>'
                   f'<div class="sides">{"".join(sides)}</div></div>')
    out.append("</div>")
    return "".join(out)


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, PNGs as data: URIs, no script, no external reference."""
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(report.title)}</title>'
           f"<style>{_CSS}</style></head><body><main><h1>{_esc(report.title)}</h1>",
           '<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in report.facts) + "</dl>",
           "<nav>" + "".join(f'<a href="#s{i}">{_esc(s.title)}</a>' for i, s in enumerate(report.sections)) + "</nav>"]
    for i, s in enumerate(report.sections):
        out.append(f'<section><h2 id="s{i}">{_esc(s.title)}</h2><div class="flow">')
        for b in s.blocks:
            if isinstance(b, Table):
                out.append(_html_table(b))
            elif isinstance(b, DataCard):
                out.append(_html_card(b))
            elif isinstance(b, PairCard):
                out.append(_html_pair_card(b))
            elif isinstance(b, Figure):
                w, h = _png_size(b.png)
                data = base64.b64encode(b.png).decode("ascii")
                out.append(f'<figure><img src="data:image/png;base64,{data}" width="{w}" height="{h}" '
                           f'alt="{html.escape(b.caption)}"><figcaption>{_esc(b.caption)}</figcaption></figure>')
            else:
                out.append(f'<p class="note">{_esc(b.text)}</p>')
        out.append("</div></section>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


def _md_table(t: Table) -> str:
    def cell(v: str) -> str:
        return v.replace("|", "\\|").replace("<", "&lt;") or " "

    align = ["---:" if num else "---" for num in _numeric_columns(t)]
    lines = [f"**{cell(t.title)}**", "", "| " + " | ".join(cell(h) for h in t.header) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _md_code(text: str) -> str:
    """A code span that holds any backticks in ``text``."""
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_card(card: DataCard) -> list[str]:
    out = ["", f"### {card.title}"]
    for e in card.examples:
        tools = ", ".join(_md_code(n) + (" ✓" if used else "") for n, used in e.tools) or "–"
        out += ["", f"**{e.kind}** ({_example_title(e)})", "", f"- **tools** (✓ used): {tools}"]
        for label, value in _turn_rows(e):
            cell = ((value.replace("<", "&lt;").replace("\n", "<br>") or "–") if isinstance(value, str) else
                    "; ".join(_md_code(f"{c.name} {c.arguments}") for c in value))
            out.append(f"- **{label}**: {cell}")
    return out


def _md_fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``."""
    return "`" * max(3, max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)


def _md_pair_card(card: PairCard) -> list[str]:
    out = ["", f"### {card.title}", "", "*In the code blocks the divergence token is in [[ ]]; "
                                        f"[[{_END}]]: that side ends there.*"]
    for e in card.examples:
        out += ["", f"**{e.kind}** ({_pair_facts(e)})"]
        for name, s in (("chosen", e.chosen), ("rejected", e.rejected)):
            score, codes = _side_facts(s)
            text = f"{e.shared}[[{s.divergence or _END}]]{s.rest}"
            fence = _md_fence(text)
            out += ["", f"- **{name}**: {score}, errors: {codes}", "", f"{fence}text", text, fence]
    return out


def render_markdown(report: Report) -> str:
    """The same report in Markdown; figures link ``<name>.png`` next to the file."""
    out = [f"# {report.title}", "", *[f"- **{k}**: {v}" for k, v in report.facts]]
    for s in report.sections:
        out += ["", f"## {s.title}"]
        for b in s.blocks:
            if isinstance(b, Table):
                out += ["", _md_table(b)]
            elif isinstance(b, DataCard):
                out += _md_card(b)
            elif isinstance(b, PairCard):
                out += _md_pair_card(b)
            elif isinstance(b, Figure):
                out += ["", f"![{b.caption}]({b.name}.png)", "", f"*{b.caption}*"]
            else:
                out += ["", f"> **Note:** {b.text}"]
    return "\n".join(out) + "\n"
