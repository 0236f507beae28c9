"""The report page in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it via
scripts/ci/install_chromium.sh) opens it from disk, offline. A copy of the page gets a small hook that records
uncaught errors, rejected promises and console.error calls, and after loading writes them, with what each plot
drew, into the DOM, which `--dump-dom` returns."""

import html
import json
import re
import shutil
import subprocess

import pytest
from test_report import SPEC, _trials, recorded_study
from test_report_glance import LR, write_glance_report

pytestmark = pytest.mark.slow

HOOK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return original.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  setTimeout(function () {
    var plots = Array.prototype.map.call(document.querySelectorAll('div.plotly-graph-div'), function (div) {
      return {id: div.id, svgs: div.querySelectorAll('svg.main-svg').length,
              points: div.querySelectorAll('path.point, .barlayer .point').length,
              lines: Array.prototype.filter.call(div.querySelectorAll('path.js-line'),
                                                 function (p) { return (p.getAttribute('d') || '').length > 2; })
                     .length,
              axes: div.querySelectorAll('.parcoords g.axis').length,
              canvases: div.querySelectorAll('canvas').length,
              xticks: Array.prototype.map.call(div.querySelectorAll('g.xaxislayer-above'), function (axis) {
                return Array.prototype.map.call(axis.querySelectorAll('text'), function (t) { return t.textContent; });
              })};
    });
    var best = document.getElementById('best'), nav = document.getElementById('contents');
    var check = {errors: window.__errors, plots: plots, plotly: typeof Plotly, text: document.body.innerText,
                 height: window.innerHeight, bestBottom: best ? best.getBoundingClientRect().bottom : null};
    var link = document.querySelector("nav#contents a[href='#trials-title']");
    if (link) link.click();  // the trial table, from the top of the page
    setTimeout(function () {
      var trials = document.getElementById('trials-title');
      check.trialsTop = trials ? trials.getBoundingClientRect().top : null;
      check.navTop = nav ? nav.getBoundingClientRect().top : null;
      var out = document.createElement('pre');
      out.id = '__check';
      out.textContent = JSON.stringify(check);
      document.body.appendChild(out);
    }, 500);
  }, 3000);
});
</script>"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _open(page_path, *flags):
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-unsafe-swiftshader",
            "--use-angle=swiftshader",
            "--allow-file-access-from-files",
            "--window-size=1400,900",
            *flags,
            page_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _check(index):
    """Open a hooked copy of the page (beside index.html, so plotly.min.js loads the same way); what it saw."""
    if _chromium() is None:
        pytest.skip("no chromium on PATH: bash scripts/ci/install_chromium.sh")
    check = index.with_name("check.html")
    check.write_text(index.read_text().replace("<head>", "<head>" + HOOK, 1))
    result = _open(check, "--dump-dom", "--virtual-time-budget=15000")
    found = re.search(r'<pre id="__check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page never finished loading: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_report_renders_in_chromium_without_console_errors(tmp_path):
    if _chromium() is None:
        pytest.skip("no chromium on PATH: bash scripts/ci/install_chromium.sh")
    from lorasweep.sweep.report import write_html_report

    root = tmp_path / "runs"
    study, spec, _ = recorded_study(tmp_path, _trials(root), spec=SPEC)
    index = write_html_report(study, spec, tmp_path / "report", run_root=root, table=["lora.rank", "lora.targets"])
    page = index.read_text()
    expected = re.findall(r'<div id="(plot-[a-z]+)"', page)
    assert len(expected) >= 6, expected
    report = _check(index)
    assert report["errors"] == [], report["errors"]
    assert report["plotly"] == "object"
    plots = {p["id"]: p for p in report["plots"]}
    assert sorted(plots) == sorted(expected)
    for name, plot in plots.items():
        assert plot["svgs"] >= 1, (name, plot)  # plotly drew it
        if name == "plot-parallel":  # lines on a WebGL canvas, one axis per parameter and objective
            assert plot["axes"] == 3 and plot["canvases"] >= 1, plot
        else:
            assert plot["points"] + plot["lines"] > 0, (name, plot)  # it has data on it
    assert "id='pivot'" in page

    shot = tmp_path / "report.png"
    _open(index, f"--screenshot={shot}", "--virtual-time-budget=15000")
    assert shot.stat().st_size > 20_000  # a page with plots, not a blank one


def _number(label: str) -> float:
    return float(label.replace("\u2212", "-"))  # plotly writes a true minus sign


def test_report_reads_at_a_glance_at_1400x900(tmp_path):
    """What a reader sees in a 1400x900 window: rounded parameters, the summary on the first screen, axes with
    whole numbers in order (not bare mantissas), the trial table one click away with the contents bar still
    in view."""
    out, _ = write_glance_report(tmp_path)
    report = _check(out / "index.html")
    assert report["errors"] == [], report["errors"]
    assert repr(LR) not in report["text"] and "optim.lr=0.000318" in report["text"]
    assert 0 < report["bestBottom"] <= report["height"], report  # the summary on the first screen
    plots = {p["id"]: p for p in report["plots"]}
    for key in ("plot-history", "plot-curves"):  # trials 0, 1, 2...; steps 2, 3, 4... (no 0.5, 2.5)
        ticks = plots[key]["xticks"]
        assert ticks and ticks[0] and all(_number(t) == int(_number(t)) for t in ticks[0]), (key, ticks)
    costs = plots["plot-costs"]["xticks"]
    assert len(costs) == 3, costs  # trainable fraction, optimizer state, peak
    for labels in costs:
        values = [_number(t) for t in labels]
        assert len(values) >= 2 and values == sorted(set(values)), labels  # "2 3 ... 9 10 2" is not
    assert "10" in costs[1], costs[1]  # the optimizer state's decade, written whole
    assert 0 <= report["trialsTop"] < report["height"] and report["navTop"] == 0, report

    shot = tmp_path / "glance.png"
    _open(out / "index.html", f"--screenshot={shot}", "--virtual-time-budget=15000")
    assert shot.stat().st_size > 20_000
