"""The layering README's "Architecture" section describes, checked on the source.

Imports only go down the layers; no module-level import cycle; function-local imports only where
they keep TensorFlow out of a light command (or import an optional dependency), each saying so;
and no file name inside a run directory is spelled outside ``detkeeper.run``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path


SOURCE = Path(__file__).resolve().parents[1] / "src" / "detkeeper"

#: Bottom to top; a package imports only packages of a lower layer (and itself).
LAYERS = {
    "errors": 0, "files": 0,
    "config": 1,
    "data": 2, "models": 2, "visualize": 2,
    "run": 3,
    "evaluation": 4,
    "training": 5, "export": 5,
    "report": 6, "tfod": 6,
    "cli": 7, "api": 7,
}
#: Same-layer imports that are allowed (importer, imported).
SAME_LAYER = {("files", "errors"), ("visualize", "data")}

#: File and folder names inside a run directory (and an export); only ``detkeeper.run`` spells them.
RUN_NAMES = {
    "config.yaml", "ledger.json", "report.html", "init_from.json", "train.log", "metadata.json",
    "verification.json", "saved_model.pb", "saved_model", "model.keras", "tflite.json", "metrics.json",
    "detections.json", "pr_curves", "model_float32.tflite", "model_int8_dynamic.tflite", "checkpoints",
    "exports",
}
RUN_PREFIXES = ("step-", ".partial-", "eval-", "unrecorded-", "replaced-", ".worker-scratch-")
#: Runs in a fresh process that must not import detkeeper, so it cannot ask detkeeper.run.
NAMES_EXEMPT = {"export/standalone_check.py"}
#: The same words, not paths inside a run: (file, text) -> why.
NAMES_ALLOWED = {
    ("cli/train_commands.py", "checkpoints"): "the command's name",
    ("data/synthetic.py", ".partial-"): "the generated dataset's own staging folder",
    ("evaluation/evaluate.py", "pr_curves"): "a key of metrics.json",
}
#: Where a function-local import must say why: "# light: ..." (keeps TensorFlow out of a light
#: command's start-up), "# optional: ..." (an optional dependency) or "# order: ..." (must come after
#: something else at run time, e.g. standalone_check's hook that refuses detkeeper).
REASONS = ("# light:", "# optional:", "# order:")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def _imports(tree: ast.Module):
    """(node, imported module names, whether it is inside a function) for each import."""
    local_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local_nodes.update(id(child) for child in ast.walk(node) if child is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names], id(node) in local_nodes
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES]
            yield node, names, id(node) in local_nodes


def _parsed():
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        yield module, path, text.splitlines(), ast.parse(text)


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, path, _, tree in _parsed():
        source = _package(module)
        for node, names, _ in _imports(tree):
            for name in names:
                if not name.startswith("detkeeper"):
                    continue
                target = _package(name)
                if target == "root":
                    if not (isinstance(node, ast.ImportFrom) and [a.name for a in node.names] == ["__version__"]):
                        wrong.append(f"{path}:{node.lineno}: imports the package root for more than __version__")
                    continue
                if source == "root" or target == source:
                    continue
                if LAYERS[target] < LAYERS[source] or (source, target) in SAME_LAYER:
                    continue
                wrong.append(f"{path.relative_to(SOURCE)}:{node.lineno}: {source} (layer {LAYERS[source]}) imports "
                             f"{name} (layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_every_package_has_a_layer():
    assert {_package(module) for module in MODULES} - {"root"} <= set(LAYERS)


def test_no_module_level_import_cycle():
    graph = {module: set() for module in MODULES}
    for module, _, _, tree in _parsed():
        for _, names, local in _imports(tree):
            if not local:
                graph[module].update(name for name in names if name in MODULES and name != module)
    cycles = _strongly_connected(graph)
    assert not cycles, f"import cycles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_function_local_imports_say_why():
    """A function-local import keeps TensorFlow out of a light command or imports an optional
    dependency, and says which on its line (or the line above)."""
    silent = []
    for module, path, lines, tree in _parsed():
        for node, names, local in _imports(tree):
            if not local:
                continue
            said = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
            if not any(reason in said for reason in REASONS):
                silent.append(f"{path.relative_to(SOURCE)}:{node.lineno}: {', '.join(names)}")
    assert not silent, "function-local imports without a '# light:', '# optional:' or '# order:' reason:\n" + \
        "\n".join(silent)


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_run_file_names_are_spelled_only_in_the_run_package():
    spelled = []
    for module, path, _, tree in _parsed():
        relative = path.relative_to(SOURCE).as_posix()
        if _package(module) == "run" or relative in NAMES_EXEMPT:
            continue
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
                if (text in RUN_NAMES or text.startswith(RUN_PREFIXES)) and (relative, text) not in NAMES_ALLOWED:
                    spelled.append(f"{relative}:{node.lineno}: {text!r}")
    assert not spelled, "ask detkeeper.run for these paths:\n" + "\n".join(spelled)


#: Run in a fresh interpreter that has imported no detkeeper module: the third-party libraries are
#: loaded once, then each detkeeper module is imported alone in a forked child of it, so a cycle
#: fails whichever of its modules comes first without paying TensorFlow's import per module.
_IMPORT_EACH = r"""
import importlib, os, sys
for library in ("numpy", "yaml", "PIL.Image", "tqdm", "tensorflow", "keras", "matplotlib.pyplot"):
    importlib.import_module(library)
assert not [name for name in sys.modules if name.split(".")[0] == "detkeeper"]
for module in sys.argv[1:]:
    child = os.fork()
    if child == 0:
        try:
            importlib.import_module(module)
        except BaseException as error:  # the child reports any failure and exits at once
            print(f"{module}: {type(error).__name__}: {error}", flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    if status:
        print(f"{module}: exit status {status}", flush=True)
"""


def test_every_module_imports_alone_in_a_fresh_process():
    """An import cycle fails whichever of its modules is imported first; try each one first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE.parent), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *sorted(MODULES)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [line for line in done.stdout.splitlines() if line.strip()]
    assert not failed, "\n".join(failed)
