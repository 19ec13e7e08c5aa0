"""report.html: the run at a glance, as one self-contained page.

The charts are SVG drawn here, inline, with no script and no CDN, so the page reads the
same offline, from S3, or attached to a ticket.
"""

from __future__ import annotations

import html
import json

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:22px;margin-bottom:0}h2{font-size:17px;margin-top:2em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:4px}table{border-collapse:collapse;margin:8px 0}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}th{color:#555;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}svg{display:block;margin:8px 0}
.grid{display:flex;flex-wrap:wrap;gap:24px}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def render(metrics: dict) -> str:
    """The report page for one run's metrics (the same dict as metrics.json)."""
    training = metrics.get("training", {})
    counts = metrics.get("counts", {})
    stages = metrics.get("stages", {})
    evaluation = metrics.get("evaluation")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>ALS run {_e(metrics.get('run_id', ''))}</title><style>{_STYLE}</style></head><body>",
        "<h1>ALS collaborative filtering</h1>",
        f"<div class=sub>run <code>{_e(metrics.get('run_id', ''))}</code> · input <code>{_e(metrics.get('input', ''))}</code>"
        f" · device <b>{_e(str(training.get('device', '')).upper())}</b></div>",
        "<h2>Data</h2>",
        _table([(k.replace("_", " "), _fmt(v)) for k, v in counts.items()]),
        "<h2>Training</h2><div class=grid>",
        _line_chart(training.get("loss") or [], "training loss per iteration", "loss"),
        _line_chart(training.get("iteration_seconds") or [], "seconds per iteration", "s"),
        "</div>",
        _table([(k.replace("_", " "), _fmt(v)) for k, v in training.items() if not isinstance(v, list)]),
        "<h2>Time per stage</h2>",
        _bar_chart({k: v for k, v in stages.items() if isinstance(v, (int, float))}),
    ]
    if evaluation:
        k = evaluation.get("k", 10)
        rows = []
        for metric in ("precision", "map", "ndcg"):
            key = f"{metric}_at_{k}"
            als, pop = evaluation["als"].get(key), evaluation["popularity"].get(key)
            lift = f"{als / pop:.2f}x" if als is not None and pop else "n/a"
            rows.append((f"{metric.upper() if metric != 'precision' else 'precision'}@{k}", _fmt(als), _fmt(pop), lift))
        parts += [
            f"<h2>Held-out evaluation</h2><div class=sub>{_fmt(evaluation.get('users_evaluated'))} users, "
            f"holdout {_fmt(evaluation.get('holdout'))} per user</div>",
            _table(rows, header=("metric", "ALS", "popularity", "ALS / popularity")),
            _grouped_bars(rows),
        ]
    parts += [
        "<h2>Parameters</h2>",
        f"<pre>{_e(json.dumps(metrics.get('params', {}), indent=2))}</pre>",
        "<h2>Versions</h2>",
        _table([(k, _fmt(v)) for k, v in metrics.get("versions", {}).items()]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(text: str) -> str:
    return html.escape(str(text))


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return _e(value)


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i else ''}>{c if i else _e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _line_chart(values, title: str, unit: str, width: int = 440, height: int = 240) -> str:
    points = [(i + 1, float(v)) for i, v in enumerate(values) if v is not None]
    if not points:
        return f"<div><b>{_e(title)}</b><p>not recorded</p></div>"
    left, right, top, bottom = 64, 16, 28, 36
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    if hi == lo:
        lo, hi = lo - (abs(lo) or 1) * 0.05, hi + (abs(hi) or 1) * 0.05
    x_max = max(max(xs), 2)

    def sx(x: float) -> float:
        return left + (x - 1) / (x_max - 1) * (width - left - right)

    def sy(y: float) -> float:
        return top + (hi - y) / (hi - lo) * (height - top - bottom)

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    ticks = []
    for j in range(5):
        y = lo + (hi - lo) * j / 4
        ticks.append(
            f"<line x1={left} x2={width - right} y1={sy(y):.1f} y2={sy(y):.1f} stroke='#eee'/>"
            f"<text x={left - 6} y={sy(y) + 4:.1f} text-anchor=end font-size=11 fill='#555'>{y:.4g}</text>"
        )
    step = max(1, round(len(xs) / 8))
    for x in xs[::step]:
        ticks.append(f"<text x={sx(x):.1f} y={height - bottom + 16} text-anchor=middle font-size=11 fill='#555'>{x}</text>")
    dots = "".join(f"<circle cx={sx(x):.1f} cy={sy(y):.1f} r=2.5 fill='#1f6feb'><title>{x}: {y:.6g} {unit}</title></circle>" for x, y in points)
    return (
        f"<svg width={width} height={height} role=img aria-label='{_e(title)}' xmlns='http://www.w3.org/2000/svg'>"
        f"<text x={left} y=16 font-size=13 font-weight=600>{_e(title)}</text>{''.join(ticks)}"
        f"<line x1={left} x2={width - right} y1={height - bottom} y2={height - bottom} stroke='#999'/>"
        f"<text x={(width + left) / 2:.0f} y={height - 4} text-anchor=middle font-size=11 fill='#555'>iteration</text>"
        f"<path d='{path}' fill=none stroke='#1f6feb' stroke-width=2/>{dots}</svg>"
    )


def _bar_chart(values: dict[str, float], width: int = 720) -> str:
    if not values:
        return "<p>not recorded</p>"
    bar, gap, left, right = 20, 6, 150, 90
    height = len(values) * (bar + gap) + 10
    top_value = max(values.values()) or 1.0
    total = sum(values.values()) or 1.0
    rows = []
    for i, (name, seconds) in enumerate(values.items()):
        y = 5 + i * (bar + gap)
        length = seconds / top_value * (width - left - right)
        rows.append(
            f"<text x={left - 8} y={y + 15} text-anchor=end font-size=12>{_e(name)}</text>"
            f"<rect x={left} y={y} width={max(length, 1):.1f} height={bar} fill='#2da44e'><title>{seconds:.3f} s</title></rect>"
            f"<text x={left + length + 6:.1f} y={y + 15} font-size=12 fill='#333'>{seconds:.2f} s ({seconds / total:.0%})</text>"
        )
    return f"<svg width={width} height={height} role=img aria-label='time per stage' xmlns='http://www.w3.org/2000/svg'>{''.join(rows)}</svg>"


def _grouped_bars(rows, width: int = 560, height: int = 200) -> str:
    data = [(name, float(a.replace(",", "")), float(p.replace(",", ""))) for name, a, p, _ in rows if a != "–" and p != "–"]
    if not data:
        return ""
    left, bottom, top = 40, 30, 26  # room for the legend above the tallest bar
    top_value = max(max(a, p) for _, a, p in data) or 1.0
    group = (width - left) / len(data)
    bw = group / 3.2
    shapes = []
    for i, (name, als, pop) in enumerate(data):
        x = left + i * group + group * 0.15
        for j, (value, colour, label) in enumerate(((als, "#1f6feb", "ALS"), (pop, "#bbb", "popularity"))):
            h = value / top_value * (height - top - bottom)
            shapes.append(
                f"<rect x={x + j * (bw + 4):.1f} y={height - bottom - h:.1f} width={bw:.1f} height={h:.1f} fill='{colour}'>"
                f"<title>{label} {value:.4f}</title></rect>"
            )
        shapes.append(f"<text x={x + bw:.1f} y={height - 10} text-anchor=middle font-size=12>{_e(name)}</text>")
    legend = (
        f"<rect x={width - 150} y=4 width=10 height=10 fill='#1f6feb'/><text x={width - 136} y=13 font-size=11>ALS</text>"
        f"<rect x={width - 100} y=4 width=10 height=10 fill='#bbb'/><text x={width - 86} y=13 font-size=11>popularity</text>"
    )
    return f"<svg width={width} height={height} role=img aria-label='ALS against popularity' xmlns='http://www.w3.org/2000/svg'>{legend}{''.join(shapes)}</svg>"
