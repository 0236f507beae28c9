"""Every command the docs show still works (issue 18, item 7).

The commands come from README.md and docs/*.md: ```bash blocks (one command a line, `\\` continues it), ```console
blocks (`$ command` followed by exactly what it prints; `$ echo $?` by its exit code) and inline `lorasweep ...`
spans. Every `lorasweep` command must exist with the options shown. Then:
- fast and offline, so run here: `train` (as `train --cfg`: every check train makes before it trains), `sweep`
  (the spec validated whole with the command's overrides: `sweep.launch.prepare`), `runs` (on an empty root),
  each console block (its output compared line by line; a command that fails wrote nothing), `--help` of every
  command, the `import` lines of python blocks;
- anything else (a real sweep on a shared storage, SLURM, reports, serving, ...) must match a row of COVERED,
  which names the test that runs it; a documented command without a row fails here, so does a row naming a test
  that does not exist or matching no documented command.
`make TARGET` must be a Makefile target that CI runs (.ci/run) or one of BY_HAND (with why); its recipe's
commands are checked as the docs' are. `pip install 'lorasweep[X]'` needs the extra; a script's options must be
its own.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import click
import pytest

from lorasweep.cli.main import _run_root_spelling, cli, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# What follows `lorasweep ` (a regex, searched) -> the tests that run such a command. Only for commands this file
# does not run itself (see needs_a_test).
COVERED = {
    r"^data model=tiny_llama data=synth_sft --show \d+": [
        "tests/test_user_tasks.py::test_data_show_marks_the_trained_part_and_counts_rows"
    ],
    r"^data data=glue_mnli": [
        "tests/test_user_tasks.py::test_mnli_shaped_csv_with_string_labels_trains_and_predicts_names"
    ],
    r"^worker .*--pack": ["tests/test_pack.py::test_a_signal_checkpoints_each_trial_and_each_resumes_alone"],
    r"^sweep .*--storage journal:": ["tests/test_sweep.py::test_four_workers_journal_file"],
    r"^sweep .*--storage postgresql:": ["tests/test_sweep.py::test_four_workers_postgres"],
    r"^sweep .*--slurm": [
        "tests/test_slurm_submit.py::test_sweep_dry_run_renders_the_array_from_the_cluster_config",
        "tests/test_slurm.py::test_array_of_two_workers_runs_every_trial",
        "tests/test_placement.py::test_slurm_one_worker_per_gpu_is_gpus_per_task",
        "tests/test_placement.py::test_slurm_several_workers_share_a_gpu_under_a_cap",
    ],
    r"^train .*--slurm": [
        "tests/test_slurm_submit.py::test_train_dry_run_passes_the_overrides_to_the_script",
        "tests/test_slurm.py::test_multi_process_trial_through_the_template_launcher",
    ],
    r"^worker --study": ["tests/test_sweep.py::test_four_workers_sqlite"],
    r"^status --study \w+$": ["tests/test_preflight.py::test_tables_show_alpha_quantization_and_optimizer"],
    r"^status --study \w+ --storage": ["tests/test_slurm.py::test_array_of_two_workers_runs_every_trial"],
    r"^report --study \w+$": ["tests/test_preflight.py::test_report_writes_no_wandb_run_for_an_untracked_sweep"],
    r"^report --study \w+ --out \S+ --wandb none$": [
        "tests/test_report_glance.py::test_summary_names_best_trial_hash_and_adapter"
    ],
    r"^report --study \w+ --table \S+ \S+$": ["tests/test_report.py::test_report_page_pivot_table_and_wandb"],
    r"^report --study \w+ --table \S+ \S+ --split \S+$": ["tests/test_pivot_split.py::test_split_through_the_cli"],
    r"^dashboard --study": ["tests/test_report.py::test_dashboard_serves_the_study"],
    r"^reproduce \w+$": ["tests/test_reproduce.py::test_reproduce_is_bitwise_equal_on_cpu"],
    r"^reproduce \w+ --tolerance": [
        "tests/test_reproduce_tolerance.py::test_tolerance_option_accepts_a_small_difference"
    ],
    r"^reproduce \w+ --wandb": [
        "tests/test_reproduce.py::test_wandb_lookup_rebuilds_the_nested_config",
        "tests/test_new_user.py::test_reproduce_from_wandb_without_an_api_key_is_one_line",
    ],
    r"^compare \w+ \w+": ["tests/test_reproduce.py::test_runs_table_and_compare"],
    r"^compare --study": ["tests/test_new_user.py::test_compare_by_study_separates_long_float_columns"],
    r"^predict ": [
        "tests/test_multi_adapter.py::test_predict_command_line",
        "tests/test_multi_adapter.py::test_predict_file_causal_lm_generates_per_adapter",
    ],
    r"^demo": ["tests/test_cli.py::test_demo_compares_lora_with_full_fine_tuning"],
    r"^estimate": [
        "tests/test_estimate_cli.py::test_estimate_prints_the_account_as_text_and_json",
        "tests/test_estimate_cli.py::test_estimate_of_llama3_8b_runs_offline_from_the_command_line",
    ],
}
# Make targets CI (.ci/run) does not run, and why.
BY_HAND = {
    "demo": "trains for minutes; its command is checked below as `train --cfg`",
    "bench": "about 20 minutes; the benchmarks measure, they do not test",
    "gpu-check": "needs CUDA; CI runs gpu-check-cpu, the same script on CPU",
    "slurm-up": "part of test-slurm",
    "slurm-down": "the CI trap stops SLURM with scripts/ci/stop_slurm.sh",
    "clean": "removes the venv",
}


# ---------------------------------------------------------------- reading the docs


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.S | re.M)


def bash_commands(body: str) -> list[str]:
    """One command per line (a trailing backslash continues it), comments and blank lines left out."""
    text = body.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(" ".join(words))
    return commands


def console_sessions(body: str) -> list[tuple[str, list[str]]]:
    """[(command, the lines it prints)] of a console block."""
    sessions: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:], []))
        else:
            sessions[-1][1].append(line)
    return sessions


def inline_commands(path: Path) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("lorasweep ")]


def documented() -> dict[str, list[tuple[str, str]]]:
    """{kind: [(where, command)]}: bash and console commands, inline spans, python blocks."""
    found: dict[str, list[tuple[str, str]]] = {"bash": [], "console": [], "inline": [], "python": []}
    for path in DOCS:
        where = str(path.relative_to(REPO))
        for language, body in code_blocks(path):
            if language in ("bash", "sh", "shell"):
                found["bash"] += [(where, c) for c in bash_commands(body)]
            elif language == "console":
                found["console"] += [(where, c) for c, _ in console_sessions(body) if c != "echo $?"]
            elif language == "python":
                found["python"].append((where, body))
        found["inline"] += [(where, c) for c in inline_commands(path)]
    return found


DOCUMENTED = documented()
# Console blocks are run and their output compared (they may show a misspelt option on purpose), so the static
# checks read the bash blocks and the inline spans.
LORASWEEP = [
    (w, c.removeprefix("lorasweep "))
    for kind in ("bash", "inline")
    for w, c in DOCUMENTED[kind]
    if c.startswith("lorasweep ")
]


def subcommand(command: str) -> str:
    """`train --cfg x=1` -> train; `--help` -> the group itself ('')."""
    first = command.split()[0]
    return "" if first.startswith("-") else first


def options(command: str) -> set[str]:
    return set(re.findall(r"(?:^|[\s\[])(--[a-z][a-z0-9-]*)", command))


def known_options(name: str) -> set[str]:
    params = cli.commands[name].params if name else cli.params
    return {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} | {"--help"}


# Options several commands share (declared once in cli/main.py: --run-root, --study, --storage, --config-dir): shown
# with one command, they count as shown for all.
SHARED = {
    o
    for o in set().union(*(known_options(n) for n in cli.commands))
    if sum(o in known_options(n) for n in cli.commands) >= 3
} - {"--help"}


def needs_a_test(command: str) -> bool:
    """What this file does not run itself: a real sweep on a shared storage, SLURM, and every other command."""
    name, opts = subcommand(command), options(command)
    if "--slurm" in opts:
        return True
    if name == "sweep":
        return "--storage" in opts
    return name not in ("train", "runs", "")


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("where,command", LORASWEEP, ids=[c for _, c in LORASWEEP])
def test_documented_commands_and_options_exist(where, command):
    name = subcommand(command)
    assert name == "" or name in cli.commands, f"{where}: `lorasweep {command}`: no command {name!r}"
    unknown = options(command) - known_options(name)
    assert not unknown, f"{where}: `lorasweep {command}`: {name or 'lorasweep'} has no option {sorted(unknown)}"


BASH = [(w, c.removeprefix("lorasweep ")) for w, c in DOCUMENTED["bash"] if c.startswith("lorasweep ")]


@pytest.mark.parametrize("where,command", BASH, ids=[c for _, c in BASH])
def test_documented_commands_parse(where, command):
    """click parses each one: the number of values an option takes, choices, types, required options."""
    name, args = subcommand(command), _run_root_spelling(shlex.split(command))  # as main() reads them
    assert name == "" or name in cli.commands, f"{where}: `lorasweep {command}`: no command {name!r}"
    if name:
        try:
            cli.commands[name].make_context(name, args[1:])
        except click.ClickException as exc:
            raise AssertionError(f"{where}: `lorasweep {command}`: {exc.format_message()}") from None


def test_every_command_and_option_is_documented():
    shown: dict[str, set[str]] = {}
    for _, command in LORASWEEP:
        shown.setdefault(subcommand(command), set()).update(options(command))
    shown_anywhere = set().union(*shown.values())
    for name in cli.commands:
        assert name in shown, f"`lorasweep {name}` is in no code block or span of README.md or docs/"
        missing = known_options(name) - shown[name] - {"--help"} - (SHARED & shown_anywhere)
        assert not missing, f"`lorasweep {name}`: options {sorted(missing)} are shown in no documented command"


def _test_exists(node_id: str) -> bool:
    file, _, name = node_id.partition("::")
    path = REPO / file
    return path.is_file() and any(
        isinstance(n, ast.FunctionDef) and n.name == name for n in ast.walk(ast.parse(path.read_text()))
    )


def test_commands_not_run_here_are_covered_by_named_tests():
    commands = [
        (w, c.removeprefix("lorasweep "))
        for w, c in DOCUMENTED["bash"]
        if c.startswith("lorasweep ") and needs_a_test(c.removeprefix("lorasweep "))
    ]
    uncovered = [f"{w}: lorasweep {c}" for w, c in commands if not any(re.search(p, c) for p in COVERED)]
    assert not uncovered, "documented commands no test runs (add a test and a COVERED row):\n" + "\n".join(uncovered)
    for pattern, tests in COVERED.items():
        assert any(re.search(pattern, c) for _, c in commands), f"COVERED row {pattern!r} matches no documented command"
        for node_id in tests:
            assert _test_exists(node_id), f"COVERED row {pattern!r}: no test {node_id}"


def _makefile_targets() -> dict[str, list[str]]:
    targets: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([\w-]+):", line)
        if match:
            current = targets.setdefault(match.group(1), [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
    return targets


def test_make_pip_and_script_commands():
    targets = _makefile_targets()
    ci = (REPO / ".ci" / "run").read_text()
    others = [(w, c) for w, c in DOCUMENTED["bash"] if not c.startswith("lorasweep ")]
    for where, command in others:
        words = command.split()
        if words[0] == "make":
            for target in words[1:]:
                assert target in targets, f"{where}: `{command}`: no Makefile target {target}"
                assert f"make {target}\n" in ci or target in BY_HAND, f"`make {target}`: not run by .ci/run"
        elif words[:2] == ["pip", "install"]:
            extras = re.findall(r"lorasweep\[([\w,]+)\]", command)
            pyproject = (REPO / "pyproject.toml").read_text()
            assert extras and all(re.search(rf"^{e} = \[", pyproject, re.M) for x in extras for e in x.split(","))
        elif re.match(r"(\.venv/bin/)?python", words[0]) and words[1].endswith(".py"):
            script = (REPO / words[1]).read_text()
            assert all(f'"{o}"' in script for o in options(command)), f"{where}: `{command}`: unknown option"
        else:
            raise AssertionError(f"{where}: `{command}`: teach tests/test_docs.py to check this kind of command")


def test_make_recipes_run_what_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for target, recipe in _makefile_targets().items():
        for line in recipe:
            if "bin/lorasweep " in line:  # make demo: checked as `train --cfg`
                command = shlex.split(line.split("bin/lorasweep ", 1)[1])
                assert command[0] == "train" and main(["train", "--cfg", *command[1:]]) == 0, line
            for script in re.findall(r"\$\(PY\) ((?:benchmarks|scripts)/\S+\.py)", line):
                assert (REPO / script).is_file(), f"make {target}: {script} does not exist"


# ---------------------------------------------------------------- runs


def test_python_blocks_import_what_they_use():
    for _where, body in DOCUMENTED["python"]:
        for line in body.splitlines():
            if re.match(r"(from lorasweep[\w.]* import |import lorasweep)", line):
                exec(line, {})  # noqa: S102 - the docs' own import lines


# The bash blocks' commands this file runs (inline spans may hold placeholders: SPEC, model=my_llama).
RUN_HERE = sorted(
    {
        c.removeprefix("lorasweep ")
        for _, c in DOCUMENTED["bash"]
        if c.startswith("lorasweep ")
        and subcommand(c.removeprefix("lorasweep "))
        and not needs_a_test(c.removeprefix("lorasweep "))
    }
)


@pytest.mark.parametrize("command", RUN_HERE)
def test_fast_documented_commands_run(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = shlex.split(command)
    if args[0] == "train":
        assert main(["train", "--cfg", *args[1:], "--run-root", str(tmp_path / "runs")]) == 0, capsys.readouterr().err
        assert "# config hash: " in capsys.readouterr().out
    elif args[0] == "sweep":
        from lorasweep.sources import find_spec
        from lorasweep.sweep.launch import prepare

        parsed = cli.commands["sweep"].make_context("sweep", args[1:])
        overrides = [o for o in parsed.params["overrides"]]
        prepare(str(find_spec(parsed.params["spec"])), overrides, parsed.params["n_trials"])
    else:
        assert main([*args, "--run-root", str(tmp_path / "empty")]) == 0
        assert capsys.readouterr().out.strip() == "(none)"
    assert not list(tmp_path.iterdir()), "a check that must write nothing wrote something"


def _console_sessions() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """[(README.md#3 (the block's number in its file), its sessions)]."""
    return [
        (f"{path.relative_to(REPO)}#{number}", console_sessions(body))
        for path in DOCS
        for number, (language, body) in enumerate(code_blocks(path))
        if language == "console"
    ]


CONSOLE = _console_sessions()


@pytest.mark.parametrize("where,sessions", CONSOLE, ids=[w for w, _ in CONSOLE])
def test_console_examples_print_what_the_docs_show(where, sessions, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = None
    for command, expected in sessions:
        if command == "echo $?":
            assert expected == [str(code)], f"{where}: exit code {code}, the docs show {expected}"
            continue
        words = shlex.split(command)
        assert words[0] == "lorasweep", f"{where}: console blocks show lorasweep commands: {command}"
        code = main(words[1:])
        captured = capsys.readouterr()
        printed = [line.rstrip() for line in (captured.out + captured.err).splitlines()]
        assert printed == expected, f"{where}: `{command}` printed:\n" + "\n".join(printed)
        if code == 2:
            assert not list(tmp_path.iterdir()), f"{where}: `{command}` failed but wrote {list(tmp_path.iterdir())}"


@pytest.mark.parametrize("name", ["", *sorted(cli.commands)])
def test_help_of_every_command(name, capsys):
    assert main([name, "--help"] if name else ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: lorasweep {name}".rstrip() + " ")
    if not name:
        assert all(command in out for command in cli.commands)


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 250
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)", text))
    assert {str(p.relative_to(REPO)) for p in DOCS[1:]} <= linked, "a docs/ page the front page does not link"
    for path in DOCS:  # every relative link points at a file that exists, and at one of its headings
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", path.read_text()):
            linked_file = path.parent / target if target else path
            assert linked_file.exists(), f"{path.relative_to(REPO)}: link to missing {target}"
            if anchor and linked_file.suffix == ".md":
                assert anchor in _anchors(linked_file), f"{path.relative_to(REPO)}: no heading #{anchor} in {target}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
