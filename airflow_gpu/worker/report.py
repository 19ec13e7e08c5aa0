"""report.html: the run at a glance, as one self-contained page.

The charts are SVG drawn here, inline, with no script and no CDN, so the page reads the
same offline, from S3, or attached to a ticket.
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable, Sequence

from .early_stop import DEFAULT_PATIENCE, DEFAULT_TOLERANCE, LossPlateau

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:980px;color:#222}
h1{font-size:22px;margin-bottom:0}.headline{font-size:16px;margin:10px 0 0;padding:10px 14px;background:#f6f8fa;border-left:4px solid #2da44e}
.headline p{margin:2px 0}h2{font-size:17px;margin-top:2em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:4px}table{border-collapse:collapse;margin:8px 0}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}th{color:#555;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}svg{display:block;margin:8px 0}
.grid{display:flex;flex-wrap:wrap;gap:24px}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:4px;margin:8px 0}
tr.chosen td{font-weight:700}ol{margin:2px 0;padding-left:20px}
"""


# The counts whose bare names could be read two ways.
_COUNT_LABELS = {
    "rows_read": "rows read",
    "interactions": "interactions (rows kept, duplicates included)",
    "duplicates_summed": "duplicate rows summed into a pair",
    "pairs": "pairs (distinct user-item, duplicates summed)",
}


def render(metrics: dict[str, Any]) -> str:
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
        headline(metrics),
        "<h2>Job</h2>",
        _job_table(metrics),
        "<h2>Data</h2>",
        _table([(_COUNT_LABELS.get(k, k.replace("_", " ")), _fmt(v)) for k, v in counts.items()]),
        _distributions(metrics.get("distributions") or {}),
        _tuning(metrics.get("tuning")),
        "<h2>Training</h2>",
        _stop_note(training),
        "<div class=grid>",
        _line_chart(training.get("loss") or [], "training loss per iteration", "loss"),
        _line_chart(training.get("iteration_seconds") or [], "seconds per iteration", "s"),
        "</div>",
        # The training stage's time is in "Time per stage"; the fit loop's own ``seconds`` would be a second figure.
        _table(
            [(k.replace("_", " "), _fmt(v)) for k, v in training.items() if not isinstance(v, list) and k != "seconds"]
        ),
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
        _samples(metrics.get("samples") or []),
        "<h2>Parameters</h2>",
        f"<pre>{_e(json.dumps(metrics.get('params', {}), indent=2))}</pre>",
        "<h2>Versions</h2>",
        _table([(k, _fmt(v)) for k, v in metrics.get("versions", {}).items()]),
        "</body></html>",
    ]
    return "\n".join(parts)


def headline_lines(metrics: dict[str, Any]) -> list[str]:
    """The run's result in a sentence or two (HTML), for the top of the page: the model against the
    popularity baseline on precision@k with the lift, on how many users, after how many iterations,
    in what wall time. Other lines (such as the run's cost) may be appended by the caller."""
    training = metrics.get("training") or {}
    evaluation = metrics.get("evaluation") or {}
    k = evaluation.get("k", 10)
    als = (evaluation.get("als") or {}).get(f"precision_at_{k}")
    pop = (evaluation.get("popularity") or {}).get(f"precision_at_{k}")
    iterations = training.get("iterations_run", training.get("iterations"))
    run = f"{_fmt(iterations)} iterations, {_fmt(metrics.get('total_seconds'))} s wall time"
    if als is None or pop is None:
        return [f"<b>No held-out evaluation</b> in this run; {run}."]
    lift = f"{als / pop:.2f}x the baseline" if pop else "the baseline scored 0"
    return [
        f"<b>ALS precision@{k} {als:.4f}</b> against popularity's {pop:.4f}: <b>{lift}</b>, "
        f"on {_fmt(evaluation.get('users_evaluated'))} held-out users; {run}."
    ]


def headline(metrics: dict[str, Any]) -> str:
    """The headline, what the run cost (worker/run_cost.py), then how the job used its GPU (the profile's
    summary lines, worker/profile.py)."""
    cost = [_e(text)] if (text := (metrics.get("cost") or {}).get("text")) else []
    profile = [_e(line) for line in (metrics.get("profile") or {}).get("summary") or ()]
    lines = headline_lines(metrics) + cost + profile
    return "<div class=headline>" + "".join(f"<p>{line}</p>" for line in lines) + "</div>"


def _e(text: object) -> str:
    return html.escape(str(text))


def _fmt(value: object) -> str:
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


def _table(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if i else ''}>{c if i else _e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _line_chart(values: Iterable[float | None], title: str, unit: str, width: int = 440, height: int = 240) -> str:
    points = [(i + 1, float(v)) for i, v in enumerate(values) if v is not None]
    if not points:
        return f"<div><b>{_e(title)}</b><p>not recorded</p></div>"
    left, right, top, bottom = 64, 16, 28, 36
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    if lo > 0:  # from zero, so a small change does not look like a large one
        lo = 0.0
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
        ticks.append(
            f"<text x={sx(x):.1f} y={height - bottom + 16} text-anchor=middle font-size=11 fill='#555'>{x}</text>"
        )
    dots = "".join(
        f"<circle cx={sx(x):.1f} cy={sy(y):.1f} r=2.5 fill='#1f6feb'><title>{x}: {y:.6g} {unit}</title></circle>"
        for x, y in points
    )
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
    bar, gap, left = 20, 6, 150
    height = len(values) * (bar + gap) + 10
    top_value = max(values.values()) or 1.0
    total = sum(values.values()) or 1.0
    # Room right of the longest bar for the widest label (about 7.5 px a character at 12 px).
    right = 12 + max(len(f"{v:.2f} s ({v / total:.0%})") for v in values.values()) * 7.5
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


def _grouped_bars(rows: Iterable[tuple[str, str, str, str]], width: int = 560, height: int = 200) -> str:
    data = [
        (name, float(a.replace(",", "")), float(p.replace(",", ""))) for name, a, p, _ in rows if a != "–" and p != "–"
    ]
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


def _job_table(metrics: dict[str, Any]) -> str:
    job = metrics.get("job") or {}
    gpu = metrics.get("gpu")
    wait = job.get("queue_wait_seconds")
    rows = [
        ("job id", _fmt(job.get("job_id") or "not a Batch or local job (run directly)")),
        ("backend", _fmt(job.get("backend") or "–")),
        ("run", f"<code>{_e(metrics.get('run_id', ''))}</code>"),
        ("started", _fmt(metrics.get("started_at"))),
        ("total wall time", f"{_fmt(metrics.get('total_seconds'))} s"),
        (
            "queue wait",
            f"{_fmt(wait)} s"
            if wait is not None
            else "not known (no AIRFLOW_GPU_SUBMITTED_AT: not submitted by airflow-gpu)",
        ),
    ]
    rows += [(k.replace("_", " "), _fmt(job[k])) for k in ("queue", "compute_environment", "attempt") if job.get(k)]
    if gpu:
        rows.append(
            (
                "GPU",
                f"{_e(gpu.get('name'))}, {gpu.get('memory_bytes', 0) / 2**30:,.1f} GiB, "
                f"compute capability {_e(gpu.get('compute_capability'))}",
            )
        )
    elif (metrics.get("training") or {}).get("device") == "gpu":
        rows.append(("GPU", "used; its model could not be read"))
    return _table(rows)


def _stop_note(training: dict[str, Any]) -> str:
    """A visible note when training stopped early, or when the loss had plateaued long before the end."""
    run, most = training.get("iterations_run"), training.get("iterations")
    if run is not None and most is not None and run < most:
        return (
            f"<div class=note>Training stopped after {run} of at most {most} iterations: "
            f"{_e(training.get('stop_reason', ''))}.</div>"
        )
    losses = training.get("loss") or []
    plateau = LossPlateau(DEFAULT_TOLERANCE, DEFAULT_PATIENCE)
    for i, loss in enumerate(losses):
        if plateau.update(loss) and i + 1 < len(losses):
            return (
                f"<div class=note>The loss had plateaued by iteration {i + 1} of {len(losses)} (less than "
                f"{DEFAULT_TOLERANCE:g} relative improvement for {DEFAULT_PATIENCE} iterations in a row): the last "
                f"{len(losses) - i - 1} iterations changed little. Early stopping (--early-stop) would end there.</div>"
            )
    return ""


def _distributions(distributions: dict[str, Any]) -> str:
    charts = [
        _histogram(distributions[key], title)
        for key, title in (("pairs_per_user", "distinct items per user"), ("pairs_per_item", "distinct users per item"))
        if distributions.get(key, {}).get("bins")
    ]
    if not charts:
        return ""
    return "<h3>How the pairs are spread</h3><div class=grid>" + "".join(charts) + "</div>"


def _histogram(summary: dict[str, Any], title: str, width: int = 440, height: int = 220) -> str:
    """Counts per power-of-two bin, on a log scale so the long tail stays visible."""
    import math

    bins = summary["bins"]
    left, right, top, bottom = 56, 10, 28, 40
    peak = max(b["count"] for b in bins) or 1
    scale = math.log10(peak + 1)
    slot = (width - left - right) / len(bins)
    shapes = []
    for i, b in enumerate(bins):
        h = (math.log10(b["count"] + 1) / scale) * (height - top - bottom) if b["count"] else 0
        x = left + i * slot
        label = str(b["low"]) if b["low"] == b["high"] else f"{b['low']}-{b['high']}"
        shapes.append(
            f"<rect x={x + 1:.1f} y={height - bottom - h:.1f} width={max(slot - 2, 1):.1f} height={h:.1f} "
            f"fill='#8250df'><title>{label}: {b['count']:,}</title></rect>"
        )
        if i % max(1, round(len(bins) / 8)) == 0:
            shapes.append(
                f"<text x={x + slot / 2:.1f} y={height - bottom + 14} text-anchor=middle font-size=10 "
                f"fill='#555'>{b['low']:,}</text>"
            )
    for value in (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000):
        if value > peak:
            break
        y = height - bottom - math.log10(value + 1) / scale * (height - top - bottom)
        shapes.append(
            f"<line x1={left} x2={width - right} y1={y:.1f} y2={y:.1f} stroke='#eee'/>"
            f"<text x={left - 6} y={y + 4:.1f} text-anchor=end font-size=10 fill='#555'>{value:,}</text>"
        )
    caption = (
        f"median {summary['median']:g}, 90th percentile {summary['p90']:g}, max {summary['max']:,}; "
        f"{summary['count']:,} in all"
    )
    return (
        f"<figure style='margin:0'><svg width={width} height={height} role=img aria-label='{_e(title)}' "
        f"class=histogram xmlns='http://www.w3.org/2000/svg'>"
        f"<text x={left} y=16 font-size=13 font-weight=600>{_e(title)}</text>{''.join(shapes)}"
        f"<line x1={left} x2={width - right} y1={height - bottom} y2={height - bottom} stroke='#999'/>"
        f"<text x={(width + left) / 2:.0f} y={height - 6} text-anchor=middle font-size=11 fill='#555'>"
        f"pairs (bins from this many)</text></svg><figcaption class=sub>{_e(caption)}</figcaption></figure>"
    )


def _tuning(tuning: dict[str, Any] | None) -> str:
    if not tuning:
        return ""
    choice = tuning["choice"]["label"]

    def versus(row: dict[str, Any]) -> str:
        if "against" not in row:
            return "the baseline"
        return f"{row['gain']:+.1%} ({row['z']:.1f} s.e.) vs {_e(row['against'])}"

    rows = "".join(
        f"<tr{' class=chosen' if row['setting'] == choice else ''}><td>{_e(row['setting'])}"
        f"{' (default)' if row['setting'] == tuning.get('default') else ''}</td>"
        f"<td class=n>{row['precision_at_10']:.4f}</td><td>{versus(row)}</td><td class=n>{row['iterations']}"
        f"{' (warm)' if row.get('warm_start') else ''}</td><td class=n>{row['seconds']:.2f}</td></tr>"
        for row in tuning.get("grid", [])
    )
    share = tuning.get("share_of_training")
    cost = f"{share:.0%} of the final training's time" if share is not None else "its share of training not known"
    gain = tuning.get("gain_over_default")
    outcome = (
        "kept the default"
        if choice == tuning.get("default")
        else f"{gain:+.1%} precision@10 over the default {_e(str(tuning.get('default')))}"
        if gain is not None
        else ""
    )
    budget = (
        f"; stopped by its time budget ({_fmt(tuning.get('budget_seconds'))} s), keeping the best so far"
        if tuning.get("stopped_by_budget")
        else ""
    )
    return (
        f"<h2>Tuning</h2><div class=sub>chose <b>{_e(choice)}</b> ({outcome}; weighting:alpha:x regularization share "
        f"of sigma_1) by precision@10 on a validation split of the training data: "
        f"{_fmt(tuning.get('sample_users'))} sampled users, {_fmt(tuning.get('validation_interactions'))} validation "
        f"pairs; {len(tuning.get('grid', []))} points searched in {_fmt(tuning.get('seconds'))} s, {cost}{budget}. "
        f"{_e(tuning.get('rule', ''))}.</div>"
        "<table class=tuning><tr><th>setting</th><th>precision@10</th><th>against the best so far</th>"
        f"<th>iterations</th><th>seconds</th></tr>{rows}</table>"
    )


def _samples(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return ""
    rows = []
    for sample in samples:
        history = "".join(
            f"<li>{_e(h['item_id'])} <span class=sub>({h['weight']:g})</span></li>" for h in sample["history"]
        )
        recs = "".join(
            f"<li>{_e(r['item_id'])} <span class=sub>({r['score']:.3f})</span></li>" for r in sample["recommendations"]
        )
        rows.append(
            f"<tr><td><code>{_e(sample['user_id'])}</code><br><span class=sub>{sample['items']:,} items</span></td>"
            f"<td><ol>{history}</ol></td><td><ol>{recs}</ol></td></tr>"
        )
    return (
        "<h2>Sample users</h2><div class=sub>a few users with a fair history: their heaviest items (weight) and "
        "their recommendations (score), seen items left out</div>"
        "<table class=samples><tr><th>user</th><th>heaviest items</th><th>recommended</th></tr>"
        + "".join(rows)
        + "</table>"
    )
