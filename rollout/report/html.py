"""The incident report as one self-contained HTML page with an inline SVG swimlane picture.

No external assets and no JavaScript: the page must open from a ticket attachment or an
air-gapped laptop. Every piece of text from the journal is escaped with html.escape.
"""

from __future__ import annotations

from html import escape

from rollout.report.markdown import render_markdown
from rollout.report.records import NO_IMPACT, IncidentReport

LANE_HEIGHT = 34
BAR_HEIGHT = 14
STRIP_HEIGHT = 6
LABEL_WIDTH = 110
PLOT_WIDTH = 860
AXIS_HEIGHT = 24

BAR_COLOURS = {
    "ok": "#2e9e4f",
    "failed": "#d1342f",
    "verify_failed": "#d1342f",
    "timed_out": "#e07b00",
    "aborted": "#8a8a8a",
    "skipped": "#c9c9c9",
    "in_doubt": "#b58900",
}
GUARD_COLOURS = {"green": "#2e9e4f", "failing": "#e0a100", "tripped": "#d1342f"}
ROLLBACK_STROKE = "#3b4cc0"

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1040px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2em .5em; text-align: left; }
pre { background: #f4f4f4; padding: .6em; overflow-x: auto; }
.marker { font-weight: bold; color: #b00; }
.legend span { display: inline-block; margin-right: 1em; }
.swatch { display: inline-block; width: 1em; height: .8em; vertical-align: middle; margin-right: .3em; }
"""


def _x(t: float, span: float) -> float:
    return round(LABEL_WIDTH + (t / span) * PLOT_WIDTH, 2) if span > 0 else float(LABEL_WIDTH)


def render_svg(report: IncidentReport) -> str:
    """One swimlane per host along time: step and rollback bars, a guard-health strip, the impact window."""
    hosts = report.summary.hosts or sorted({b.host for b in report.bars})
    span = max(report.span_seconds, 0.001)
    height = AXIS_HEIGHT + LANE_HEIGHT * len(hosts) + 4
    width = LABEL_WIDTH + PLOT_WIDTH + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="swimlanes" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="steps per host along time">',
        "<title>steps, rollbacks and guard health per host along time</title>",
        '<defs><pattern id="rollback-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{ROLLBACK_STROKE}" stroke-width="3"/></pattern></defs>',
    ]
    if report.impact_window is not None:
        a, b = report.impact_window
        x1, x2 = _x(a, span), _x(b, span)
        parts.append(
            f'<rect class="impact-window" x="{x1}" y="0" width="{max(round(x2 - x1, 2), 1)}" height="{height}" '
            'fill="#d1342f" fill-opacity="0.12"><title>impact window: first failing guard probe to guards green '
            "again</title></rect>"
        )
    ticks = 5
    for i in range(ticks + 1):
        t = span * i / ticks
        x = _x(t, span)
        parts.append(f'<line x1="{x}" y1="{AXIS_HEIGHT - 6}" x2="{x}" y2="{height}" stroke="#eee"/>')
        parts.append(f'<text x="{x}" y="{AXIS_HEIGHT - 10}" font-size="10" text-anchor="middle">+{t:.2f}s</text>')
    for lane, host in enumerate(hosts):
        top = AXIS_HEIGHT + lane * LANE_HEIGHT
        parts.append(f'<g class="lane" data-host="{escape(host)}">')
        parts.append(f'<text x="4" y="{top + 16}" font-size="12">{escape(host)}</text>')
        parts.append(
            f'<line x1="{LABEL_WIDTH}" y1="{top + LANE_HEIGHT - 1}" x2="{width}" y2="{top + LANE_HEIGHT - 1}" '
            'stroke="#ddd"/>'
        )
        for bar in (b for b in report.bars if b.host == host):
            x1, x2 = _x(bar.start, span), _x(bar.end, span)
            colour = BAR_COLOURS.get(bar.outcome, "#8a8a8a")
            label = escape(f"{bar.kind} {bar.step} on {host}: {bar.outcome} (+{bar.start:.3f}s to +{bar.end:.3f}s)")
            if bar.kind == "rollback":
                fill = 'fill="url(#rollback-hatch)"'
                stroke = f'stroke="{ROLLBACK_STROKE if bar.outcome == "ok" else colour}" stroke-width="2"'
            else:
                fill = f'fill="{colour}"'
                stroke = 'stroke="#333" stroke-width="0.5"'
            parts.append(
                f'<rect class="bar {escape(bar.kind)} {escape(bar.outcome)}" x="{x1}" y="{top + 3}" '
                f'width="{max(round(x2 - x1, 2), 2)}" height="{BAR_HEIGHT}" {fill} {stroke}><title>{label}</title></rect>'
            )
        for seg in (s for s in report.guard_segments if s.host == host):
            x1, x2 = _x(seg.start, span), _x(seg.end, span)
            parts.append(
                f'<rect class="guard {escape(seg.state)}" x="{x1}" y="{top + BAR_HEIGHT + 8}" '
                f'width="{max(round(x2 - x1, 2), 1)}" height="{STRIP_HEIGHT}" '
                f'fill="{GUARD_COLOURS.get(seg.state, "#8a8a8a")}"><title>'
                f"{escape(f'guards on {host}: {seg.state} (+{seg.start:.3f}s to +{seg.end:.3f}s)')}</title></rect>"
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> str:
    items = [
        ("#2e9e4f", "step ok / guards green"),
        ("#d1342f", "step or verification failed / guard tripped"),
        ("#e0a100", "guard failing"),
        ("#e07b00", "timed out"),
        ("#8a8a8a", "aborted"),
    ]
    spans = "".join(f'<span><i class="swatch" style="background:{c}"></i>{escape(t)}</span>' for c, t in items)
    spans += f'<span><i class="swatch" style="border:2px solid {ROLLBACK_STROKE}"></i>rollback (hatched)</span>'
    spans += '<span><i class="swatch" style="background:#d1342f;opacity:.2"></i>impact window</span>'
    return f'<p class="legend">{spans}</p>'


def _markdown_to_html(markdown: str) -> str:
    """Enough Markdown for the report's own output: headings, tables, lists, code blocks, paragraphs."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            block: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre>{escape(chr(10).join(block))}</pre>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows: list[list[str]] = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().replace("\\|", "|") for c in _split_row(lines[i])]
                if not all(set(c) <= {"-"} and c for c in cells):
                    rows.append(cells)
                i += 1
            i -= 1
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            out.append(f"<table>{body}</table>")
        elif line.startswith("- "):
            items: list[str] = []
            while i < len(lines) and lines[i].startswith("- "):
                text = lines[i][2:]
                css = ' class="marker"' if "**OUTAGE" in text or "**MITIGATED" in text or "**ENDS" in text else ""
                items.append(f"<li{css}>{_inline(text)}</li>")
                i += 1
            i -= 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _split_row(line: str) -> list[str]:
    cells: list[str] = []
    current = ""
    j = 1
    while j < len(line):
        ch = line[j]
        if ch == "\\" and j + 1 < len(line) and line[j + 1] == "|":
            current += "\\|"
            j += 2
            continue
        if ch == "|":
            cells.append(current)
            current = ""
        else:
            current += ch
        j += 1
    return cells


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags."""
    if "`" not in text and "**" not in text:
        return escape(text)  # most timeline lines: nothing to split
    out: list[str] = []
    for n, piece in enumerate(text.split("`")):
        if n % 2:
            out.append(f"<code>{escape(piece)}</code>")
        else:
            bolds = piece.split("**")
            out.append("".join(f"<strong>{escape(b)}</strong>" if k % 2 else escape(b) for k, b in enumerate(bolds)))
    return "".join(out)


def render_html(report: IncidentReport) -> str:
    """The whole report as one self-contained HTML page."""
    s = report.summary
    title = escape(f"Incident report: {s.plan} on {s.environment} ({s.outcome})")
    impact_note = "" if report.impact is not None else f"<p>{escape(NO_IMPACT.capitalize())}.</p>"
    body = _markdown_to_html(render_markdown(report))
    picture = (
        '<h2>Picture</h2><figure class="picture">'
        + render_svg(report)
        + "<figcaption>One lane per host; time since the run started.</figcaption></figure>"
        + _legend()
        + impact_note
    )
    # the picture goes right after the summary table, before the impact section
    marker = "<h2>Impact</h2>"
    body = body.replace(marker, picture + marker, 1) if marker in body else body + picture
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
