"""The report page in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it via
scripts/ci/install_chromium.sh) opens it from disk, offline. A copy of the page gets a small hook that records
uncaught errors, rejected promises and console.error calls, and after loading writes them, with what each plot
drew, into the DOM, which `--dump-dom` returns."""

import json
import re
import shutil
import subprocess

import pytest

from test_report import SPEC, _trials, recorded_study

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
              canvases: div.querySelectorAll('canvas').length};
    });
    var out = document.createElement('pre');
    out.id = '__check';
    out.textContent = JSON.stringify({errors: window.__errors, plots: plots, plotly: typeof Plotly});
    document.body.appendChild(out);
  }, 3000);
});
</script>"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _open(page_path, *flags):
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--use-angle=swiftshader", "--allow-file-access-from-files", "--window-size=1300,1600", *flags,
         page_path.as_uri()],
        capture_output=True, text=True, timeout=240)


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
    check = index.with_name("check.html")  # beside index.html, so plotly.min.js loads the same way
    check.write_text(page.replace("<head>", "<head>" + HOOK, 1))

    result = _open(check, "--dump-dom", "--virtual-time-budget=15000")
    found = re.search(r'<pre id="__check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page never finished loading: {result.stderr[-2000:]}"
    report = json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&amp;", "&"))
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
    assert "id='pivot'" in page or 'id="pivot"' in result.stdout

    shot = tmp_path / "report.png"
    _open(index, f"--screenshot={shot}", "--virtual-time-budget=15000")
    assert shot.stat().st_size > 20_000  # a page with plots, not a blank one
