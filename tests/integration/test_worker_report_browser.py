"""report.html in a real browser: headless Chromium renders a real run's report.

Chromium comes from Debian's packages (.ci/run installs it); where it is missing the test
skips and says so. Two renders of one report:
- a copy with a probe script first in <head>: it records every error event (script errors,
  and resources that failed to load, which an offline page must not have), then, once the
  page has loaded, counts the charts and tables and finds every chart label that spills
  out of its chart, and writes all that into the DOM, which --dump-dom prints;
- the report itself as a screenshot, decoded here, so that a blank or unstyled page fails.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.worker.__main__ import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(e.message || (t && (t.src || t.href)) || 'error event');
}, true);
window.addEventListener('load', function () {
  var svgs = Array.prototype.slice.call(document.querySelectorAll('svg'));
  var clipped = [];
  svgs.forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    svg.querySelectorAll('text').forEach(function (t) {
      var b = t.getBoundingClientRect();
      if (b.right > box.right + 0.5 || b.left < box.left - 0.5 || b.top < box.top - 0.5 || b.bottom > box.bottom + 0.5)
        clipped.push(t.textContent);
    });
  });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    errors: window.__errors, clipped: clipped,
    charts: svgs.map(function (s) { return s.getAttribute('aria-label'); }),
    tables: document.querySelectorAll('table').length,
    sample_rows: document.querySelectorAll('table.samples tr').length,
    tuning_rows: document.querySelectorAll('table.tuning tr').length,
    notes: Array.prototype.map.call(document.querySelectorAll('.note'), function (n) { return n.textContent; })
  });
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (apt-get install chromium, as .ci/run does); the report's browser test needs one")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG, unfiltered."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format depth {depth} colour {colour}"
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    _browser()
    root = tmp_path_factory.mktemp("report")
    table = synthetic_interactions(30_000, n_users=1_200, n_items=250, seed=8)
    write_shards(table, root / "in", "parquet", objects=2)
    out = root / "out"
    assert (
        main(
            [
                "-q",
                "als",
                "--input",
                str(root / "in"),
                "--output",
                str(out),
                "--weight-col",
                "plays",
                "--factors",
                "8",
                "--iterations",
                "40",
                "--eval-holdout",
                "0.2",
                "--threads",
                "1",
                "--tune",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    return out / manifest["report"]


def _probe(page: str, tmp_path: Path) -> dict:
    """What the probe script found in ``page`` once Chromium had loaded it."""
    probe = tmp_path / "probed.html"
    probe.write_text(page.replace("<style>", PROBE + "<style>", 1))
    done = _chromium(_browser(), tmp_path / "profile", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe never ran: the page did not load\n{done.stdout[-1500:]}"
    return json.loads(html.unescape(found.group(1)))


def test_report_renders_in_chromium_with_its_charts_and_tables_and_no_errors(report, tmp_path):
    result = _probe(report.read_text(), tmp_path)
    assert result["errors"] == []
    assert result["clipped"] == [], f"chart labels cut off: {result['clipped']}"
    for chart in (
        "training loss per iteration",
        "seconds per iteration",
        "time per stage",
        "ALS against popularity",
        "distinct items per user",
        "distinct users per item",
    ):
        assert chart in result["charts"]
    assert result["tables"] >= 6
    assert result["sample_rows"] == 1 + 3  # a header and three users
    searched = json.loads(report.with_name("metrics.json").read_text())["tuning"]["grid"]
    assert len(searched) >= 2 and result["tuning_rows"] == 1 + len(searched)  # a header and each point searched
    assert any("stopped after" in note for note in result["notes"])


def test_report_screenshot_is_the_full_page_and_not_blank(report, tmp_path):
    browser = _browser()
    shot = tmp_path / "shot.png"
    done = _chromium(browser, tmp_path / "profile", "--window-size=1000,4200", f"--screenshot={shot}", report.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 4200)
    step = 3 if len(rows[0]) == width * 3 else 4
    pixels = [row[i : i + 3] for row in rows[::4] for i in range(0, len(row), step * 4)]
    not_white = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    assert not_white > 0.03, f"only {not_white:.1%} of the page is not white: a blank page"

    def near(colour: tuple[int, int, int]) -> int:
        return sum(1 for p in pixels if all(abs(a - b) <= 12 for a, b in zip(p, colour)))

    # Chart fills: the pair histograms (#8250df) and the stage bars (#2da44e) were drawn.
    assert near((0x82, 0x50, 0xDF)) > 20 and near((0x2D, 0xA4, 0x4E)) > 5


def test_the_widest_stage_bars_label_is_not_cut_off_in_a_long_run(report, tmp_path):
    """A run of hours: the longest bar's label ("12345.68 s (81%)") is the widest the chart gets."""
    from airflow_gpu.worker.report import render

    metrics = json.loads((report.parent / "metrics.json").read_text())
    metrics["stages"] = {name: seconds * 1000 + 1 for name, seconds in metrics["stages"].items()}
    metrics["stages"]["train"] = 12345.678
    result = _probe(render(metrics), tmp_path)
    assert result["errors"] == [] and "time per stage" in result["charts"]
    assert result["clipped"] == [], f"chart labels cut off: {result['clipped']}"
