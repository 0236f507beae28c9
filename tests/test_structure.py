"""The code's shape, checked on the source: no import cycle among lorasweep's modules or between its top-level
parts (lora/, sweep/, config/schema.py, ... each one node; imports inside functions count), and no private attribute
or private module of Optuna, Hydra, Accelerate or argparse used outside internals.py (where each has a test)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lorasweep"
LIBRARIES = ("optuna", "hydra", "accelerate", "argparse")
# Private names lorasweep reads outside internals.py that belong to no library above, each with its reason.
OTHER_PRIVATE = {
    ("lora/kernel.py", "_base"),  # torch's Tensor._base: is the output a view (then it cannot be modified in place)
    ("estimate/fake_model.py", "_quantized"),  # lorasweep's own quantize._quantized, swapped for fake tensors
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("lorasweep", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The lorasweep modules `name` imports anywhere in its file (a `from pkg import sub` names the submodule)."""
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            prefix = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (prefix, node.module or "") if p)
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    resolved = set()
    for target in found:
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        if target in modules and target != name:
            resolved.add(target)
    return resolved


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle_through_a_function_level_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_modules_or_top_level_parts():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}

    def part(name):
        return ".".join(name.split(".")[:2])

    parts: dict[str, set[str]] = {}
    for name, targets in graph.items():
        parts.setdefault(part(name), set()).update(part(t) for t in targets if part(t) != part(name))
    assert (_cycles(graph), _cycles(parts)) == ([], [])


def _private_uses(path: Path) -> list[tuple[str, str]]:
    """(what, name) for each private attribute read on something other than self/cls, and each private module
    or name imported from another library."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                uses.append(("attribute", node.attr))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [*node.module.split("."), *(a.name for a in node.names)]
            if any(n.startswith("_") and not n.startswith("__") for n in names):
                uses.append(("import", node.module))
    return uses


def test_private_apis_of_optuna_hydra_accelerate_argparse_only_in_internals():
    assert _private_uses(Path(__file__)) == []  # (this file reads none: the check below is not vacuous)
    sample = PACKAGE / "internals.py"
    assert ("attribute", "_study_id") in _private_uses(sample)
    assert ("import", "hydra._internal.utils") in _private_uses(sample)
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE))
        if where == "internals.py":
            continue
        for kind, name in _private_uses(path):
            library_module = kind == "import" and name.split(".")[0] in LIBRARIES
            if library_module or (kind == "attribute" and (where, name) not in OTHER_PRIVATE):
                offenders.append(f"{where}: {kind} {name}")
    assert offenders == [], "use a function of lorasweep/internals.py (with its test) instead"


def test_every_folder_of_modules_is_a_package():
    """The wheel's find_packages skips a folder without __init__.py (an editable install still imports it as a
    namespace package, so only a built wheel would show the hole)."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").is_file())
    assert missing == []


# The parts, bottom to top (docs/ARCHITECTURE.md draws them): a part imports only parts before it. lorasweep/
# __init__.py ("": the version, and the public API named as strings, imported lazily) and _moved.py (old paths,
# imported by name only) import nothing else, so they are the bottom; then the top-level helpers.
LAYERS = [
    "_moved", "", "errors", "fileio", "choices", "tables", "sources", "internals",
    "lora", "data", "model", "step", "config", "estimate", "slurm", "runs", "training", "pack", "sweep", "serve",
    "cli",
]  # fmt: skip
MAX_TOP_LEVEL_MODULES = 12
MAX_LINES = 400


def _part(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def test_every_part_imports_only_the_parts_below_it():
    modules = _modules()
    assert {_part(n) for n in modules} <= set(LAYERS), "a new part: place it in LAYERS (and docs/ARCHITECTURE.md)"
    upward = sorted(
        f"{name} -> {target}"
        for name, path in modules.items()
        for target in _imports(name, path, modules)
        if _part(target) != _part(name) and LAYERS.index(_part(target)) > LAYERS.index(_part(name))
    )
    assert upward == []


def test_the_top_level_shows_the_architecture():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    names = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            names.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    assert {n: w for n, w in names.items() if len(w) > 1} == {}, "two modules with one name"
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_part_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        owner = init.parent.name
        assert len(doc) > 40, f"{owner}/__init__.py: say what the package owns"
        assert "May import" in doc or owner == "cli", f"{owner}/__init__.py: say what it may import"  # cli: the top


def test_no_source_file_is_hidden_by_gitignore():
    """A module that .gitignore hides is on this machine and missing from every clone (a root-level `runs/` once
    hid src/lorasweep/runs/__init__.py, and the wheel lost the package)."""
    import shutil
    import subprocess

    root = PACKAGE.parents[1]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return  # an unpacked sdist or wheel: nothing to compare with
    hidden = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "src", "conf", "sweeps", "slurm"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [h for h in hidden if "__pycache__" not in h and ".egg-info" not in h] == []
