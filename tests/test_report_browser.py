"""report.html in a real browser: headless Chromium opens the report with a script added
that runs on load and writes its findings into the page (a hidden <pre id="checks">),
which ``--dump-dom`` prints: every image decoded (naturalWidth > 0), every figure
captioned, no box whose text overflows it (scrollWidth ≤ clientWidth + 1) and no
horizontal scroll of the page at a 1280-px window. Skips without a chromium binary
(``make test`` installs Debian's chromium)."""

import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_fixtures import write_every_figure_report

from memgen.cli import cli

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
WIDTH = 1280
# Runs on load: the checks' results as JSON in <pre id="checks"> (appended after them).
CHECKS = """window.addEventListener("load", () => {
  const overflow = [];
  for (const el of document.querySelectorAll("body, body *")) {
    if (["SCRIPT", "STYLE"].includes(el.tagName) || !el.textContent.trim()) continue;
    const display = getComputedStyle(el).display;
    if (display === "inline" || display === "none") continue;
    if (el.scrollWidth > el.clientWidth + 1)
      overflow.push({tag: el.tagName, text: el.textContent.trim().slice(0, 80),
                     scrollWidth: el.scrollWidth, clientWidth: el.clientWidth});
  }
  const images = [...document.images].map(i => ({alt: i.alt, complete: i.complete,
                                                 naturalWidth: i.naturalWidth}));
  const figures = [...document.querySelectorAll("figure")].map(f => ({
    images: f.querySelectorAll("img").length,
    caption: (f.querySelector("figcaption") || {textContent: ""}).textContent.trim()}));
  const page = {scrollWidth: document.documentElement.scrollWidth,
                innerWidth: window.innerWidth};
  const out = document.createElement("pre");
  out.id = "checks";
  out.hidden = true;
  out.textContent = JSON.stringify({overflow, images, figures, page});
  document.body.appendChild(out);
});"""


@pytest.fixture(scope="module")
def chromium():
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("no chromium binary found (looked for " + ", ".join(BROWSERS) + "): "
                    "apt-get install chromium, or run make test, which installs it")
    return found


def browser_checks(chromium, report, tmp_path) -> dict:
    """Open ``report`` with CHECKS added and return what they found."""
    page = tmp_path / f"checked-{report.parent.name}.html"
    page.write_text(report.read_text().replace("</body>", f"<script>{CHECKS}</script></body>"))
    # its own process group, so that a timeout kills the renderer children too
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         f"--window-size={WIDTH},1000", "--virtual-time-budget=10000", "--dump-dom",
         page.as_uri()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    found = re.search(r'<pre id="checks" hidden="">(.*?)</pre>', stdout, re.S)
    assert found, f"no checks in the page (exit {proc.returncode}): {stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def assert_renders(checks: dict, n_figures: int) -> None:
    assert len(checks["images"]) == n_figures
    assert [i["alt"] for i in checks["images"] if not i["naturalWidth"]] == []
    assert len(checks["figures"]) == n_figures
    assert all(f["images"] == 1 and len(f["caption"]) > 100 for f in checks["figures"])
    assert checks["overflow"] == []
    assert checks["page"]["innerWidth"] == WIDTH
    assert checks["page"]["scrollWidth"] <= WIDTH  # no horizontal scroll


def test_a_sweeps_report_renders_in_chromium(chromium, tmp_path):
    run = tmp_path / "tiny"
    result = CliRunner().invoke(cli, ["--quiet", "sweep", str(TINY), "--out",
                                      str(run)])
    assert result.exit_code == 0, result.output
    assert_renders(browser_checks(chromium, run / "report.html", tmp_path), 2)


def test_every_figure_type_renders_in_chromium(chromium, tmp_path):
    report = write_every_figure_report(tmp_path / "every")
    assert_renders(browser_checks(chromium, report, tmp_path), 8)


def test_the_checks_catch_overflow_and_broken_images(chromium, tmp_path):
    """A control: a line that cannot wrap in a narrow box, and an image that cannot load."""
    bad = tmp_path / "bad" / "report.html"
    bad.parent.mkdir()
    bad.write_text('<!doctype html><html><body><p style="width:200px;white-space:nowrap">'
                   + "unbreakable " * 40 + '</p><img alt="missing" src="missing.png">'
                   + "</body></html>")
    checks = browser_checks(chromium, bad, tmp_path)
    assert [o["tag"] for o in checks["overflow"]] == ["BODY", "P"]
    assert checks["images"] == [{"alt": "missing", "complete": True, "naturalWidth": 0}]
    assert checks["page"]["scrollWidth"] > WIDTH
