"""The report reads at a glance (issue 20): parameters rounded (exact on hover), log axes labelled with whole
numbers, whole-number trial and step axes, a summary of the best trial (hash, adapter), every section one click
from the top, and learning curves that do not hide each other. One study (a log-scale float parameter, memory
spread over a decade, three trials with the same curve), one report through the CLI, read back."""

import json
import math
import re
from html.parser import HTMLParser

import pytest
from optuna.trial import TrialState
from test_report import recorded_study

from lorasweep.cli.main import main

LR = 0.00031841839274374237  # the best trial's learning rate, as the sampler drew it
SPEC = {
    "study": "glance",
    "n_trials": 5,
    "objectives": [{"metric": "eval/loss", "direction": "minimize"}],
    "pruner": {"name": "none"},
    "params": {
        "lora.rank": {"type": "categorical", "choices": [2, 8]},
        "optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
    },
}
SAME = {2: 0.5, 4: 0.4, 6: 0.3}  # three trials learn exactly alike


def _metrics(loss, rank, state_mib, peak_mib):
    return {
        "eval/loss": loss,
        "params/trainable_fraction": 0.001 * rank,
        "perf/loop_time_s": 12.5,
        "memory/optimizer_state_bytes": state_mib * 2**20,
        "memory/peak_bytes": peak_mib * 2**20,
    }


def glance_trials(root):
    """Five trials; the best (0) has a run folder with an adapter."""
    (root / "aaaaaaaaaaaa" / "adapter").mkdir(parents=True)
    C = TrialState.COMPLETE

    def done(rank, lr, loss, digest, state_mib, curve):
        return (
            C,
            {"lora.rank": rank, "optim.lr": lr},
            loss,
            {"config_hash": digest, "metrics": _metrics(loss, rank, state_mib, 300 + 100 * state_mib)},
            curve,
        )

    return [
        done(2, LR, 0.20, "aaaaaaaaaaaa", 2, {2: 0.45, 4: 0.3, 6: 0.20}),
        done(8, 0.0012345678, 0.30, "bbbbbbbbbbbb", 8, SAME),
        done(8, 0.0021, 0.30, "cccccccccccc", 20, SAME),
        done(2, 0.00015, 0.30, "dddddddddddd", 3, SAME),
        (
            TrialState.PRUNED,
            {"lora.rank": 2, "optim.lr": 0.0005},
            None,
            {"config_hash": "eeeeeeeeeeee"},
            {2: 0.5, 4: 0.4},
        ),
    ]


def write_glance_report(tmp_path):
    """The study and its report, through the CLI; returns (report folder, run root)."""
    root = tmp_path / "runs"
    _, _, url = recorded_study(tmp_path, glance_trials(root), spec=SPEC)
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--study",
                "glance",
                "--storage",
                url,
                "--run-root",
                str(root),
                "--out",
                str(out),
                "--wandb",
                "none",
            ]
        )
        == 0
    )
    return out, root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glance")
    out, root = write_glance_report(tmp)
    return (out / "index.html").read_text(), root


class _Page(HTMLParser):
    """What a reader sees (text outside scripts and styles), every title attribute, every id, the contents
    bar's links, and the text of the element with id 'best' (the summary)."""

    def __init__(self, page):
        super().__init__()
        self.text, self.titles, self.ids, self.links, self.best = [], [], [], [], []
        self._skip = self._in_nav = 0
        self._best_depth = None
        self._depth = 0
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._depth += 1
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "nav":
            self._in_nav += 1
        if tag == "a" and self._in_nav:
            self.links.append(attrs.get("href", ""))
        if "title" in attrs:
            self.titles.append(attrs["title"])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if attrs.get("id") == "best":
            self._best_depth = self._depth
        if tag in ("td", "th") and self._best_depth is not None:
            self.best.append(" ")  # cells apart, inline markup (a hover span) not

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        if tag == "nav":
            self._in_nav -= 1
        if self._best_depth == self._depth and tag == "table":
            self._best_depth = None
        self._depth -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)
            if self._best_depth is not None:
                self.best.append(data)


def plots(page: str) -> dict:
    """Each plotly figure on the page: div id -> (data, layout), read from its Plotly.newPlot call."""
    decoder, out = json.JSONDecoder(), {}
    for found in re.finditer(r'Plotly\.newPlot\(\s*"(plot-[a-z]+)",\s*', page):
        data, end = decoder.raw_decode(page, found.end())
        layout, _ = decoder.raw_decode(page[end:].lstrip().removeprefix(",").lstrip())
        out[found.group(1)] = (data, layout)
    return out


def test_parameters_are_rounded_and_exact_on_hover(report):
    page, _ = report
    seen = _Page(page)
    visible = " ".join(seen.text)
    assert repr(LR) not in visible and "0.0012345678" not in visible  # nowhere in full: summary, table
    assert repr(LR) in seen.titles and "0.0012345678" in seen.titles  # ... but on hover
    best = "".join(seen.best)
    assert "optim.lr=0.000318" in best and "lora.rank=2" in best, best  # an integer as it is
    assert re.search(r"<td class='num'><span title='0\.0012345678'>0\.00123</span></td>", page)


def test_log_axes_label_whole_numbers(report):
    figures = plots(report[0])
    checked = []
    for key, (_data, layout) in figures.items():
        for name, axis in layout.items():
            if not re.fullmatch(r"[xy]axis\d*", name) or axis.get("type") != "log":
                continue
            values = axis.get("tickvals")
            assert values, (key, name, axis)  # plotly's own log ticks print bare mantissas ("2 3 ... 9 2")
            labels = axis.get("ticktext") or [str(v) for v in values]
            assert [float(t) for t in labels] == pytest.approx(values, rel=5e-3), (key, name)
            if "range" in axis:  # at least two labels inside what is drawn
                low, high = (10**r for r in axis["range"])
                assert sum(low <= v <= high for v in values) >= 2, (key, name, values, axis["range"])
            checked.append((key, axis.get("title", {}).get("text")))
    # the cost plot's optimizer-state (MiB) and trainable-fraction axes, and the rank axis
    assert ("plot-costs", "MiB") in checked and ("plot-costs", "% of all parameters") in checked, checked
    dims = {d["label"]: d for d in figures["plot-parallel"][0][0]["dimensions"]}
    lr = dims["optim.lr (log)"]  # drawn as log10, labelled in learning rates
    assert [float(t) for t in lr["ticktext"]] == pytest.approx([10**v for v in lr["tickvals"]], rel=5e-3)
    assert "0.001" in lr["ticktext"] and len(lr["ticktext"]) >= 3


def test_trial_and_step_axes_are_whole_numbers(report):
    figures = plots(report[0])
    for key in ("plot-history", "plot-curves"):
        axis = figures[key][1]["xaxis"]
        assert axis.get("tickmode") == "linear" and axis.get("tick0") == 0, (key, axis)
        assert isinstance(axis.get("dtick"), int) and axis["dtick"] >= 1, (key, axis)  # never trial 0.5


def test_summary_names_best_trial_hash_and_adapter(report):
    page, root = report
    best = " ".join("".join(_Page(page).best).split())
    assert "best trial 0" in best
    assert "aaaaaaaaaaaa" in best and str(root / "aaaaaaaaaaaa" / "adapter") in best
    assert "0.2" in best  # its eval/loss
    assert page.index("id='best'") < page.index('id="plot-')  # above the plots


def test_every_section_is_one_click_from_the_top(report):
    page, _ = report
    seen = _Page(page)
    assert seen.links, "no contents bar"
    assert page.index("<nav id='contents'>") < page.index('id="plot-')  # before the first plot
    targets = [link.removeprefix("#") for link in seen.links]
    assert all(t in seen.ids for t in targets), (targets, seen.ids)
    assert targets[0] == "trials-title" and page.index("id='trials-title'") < page.index("id='trials'")
    for key in plots(page):  # every figure has its link
        assert f"figure-{key.removeprefix('plot-')}" in targets, key


def test_identical_learning_curves_stay_visible(report):
    data, _ = plots(report[0])["plot-curves"]
    drawn = [(tuple(t["x"]), tuple(t["y"]), t["line"].get("dash")) for t in data]
    assert len(drawn) == len(set(drawn)), drawn  # no line drawn exactly over another
    named = [int(n) for t in data for n in re.findall(r"\d+", t["name"].split("(")[0])]
    assert sorted(named) == [0, 1, 2, 3, 4]  # each trial named once, on the line that shows it
    shared = next(t for t in data if tuple(t["y"]) == tuple(SAME.values()))
    assert shared["name"].startswith("trials 1, 2, 3")


def test_short_numbers_and_ticks():
    from lorasweep.sweep.report.numbers import integer_axis, log_axis, log_ticks, short

    assert short(LR) == "0.000318" and short(8) == "8" and short(1.0e-5) == "1e-05" and short("qv") == "qv"
    assert short(1234.5) == "1230" and short(1000.0) == "1000"  # plain, not 1.23e+03
    assert log_ticks(1.5, 22) == [2, 5, 10, 20] and log_ticks(250, 5200) == [500, 1000, 2000, 5000]
    assert log_ticks(300, 310) == [300, 310]  # too narrow for 1..9: its two ends
    assert log_axis([2.0, 2.0])["tickvals"] == [2]  # every trial alike: that value, not the padding's ends
    wide = log_ticks(2e-7, 3e3)
    assert 3 <= len(wide) <= 8 and all(math.log10(t) == round(math.log10(t)) for t in wide)  # decades only
    assert [integer_axis(n)["dtick"] for n in (3, 10, 11, 25, 60, 1000)] == [1, 1, 2, 5, 10, 100]
