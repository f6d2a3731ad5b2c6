# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The package's modules depend one way: math, quantizers, model, solver, entry points."""

import ast
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(__file__), os.pardir, "brevitas_dmx")

# Each module (by its first name under brevitas_dmx) and its layer; a module may import only
# from lower layers, or from its own package (core.batch from core.offset).
LAYERS = {
    # settings, formats and process helpers: no other brevitas_dmx module below them
    "config": 0,
    "formats": 0,
    "profiling": 0,
    "distributed": 0,
    "console": 1,  # the progress lines of the commands
    "data": 1,
    "loading": 1,  # the math
    "functional": 1,
    "core": 2,  # Brevitas glue: proxies, injectors, layers
    "proxy": 3,
    "quant": 4,
    "nn": 5,  # the model-level helpers, then what works on whole models
    "model": 6,
    "solver": 7,
    "baselines": 7,
    "evaluate": 7,
    "weight_rounding": 7,  # GPTQ and its kin on finalized models
    "export": 8,  # the command line and the Brevitas registries
    "llm_args": 9,
    "pipeline": 9,  # the steps both entry points share
    "brevitas_plugin": 10,
    "llm": 10,
    "pareto": 11,
    "cli": 11,
}
# ``import brevitas_dmx`` loads its public names lazily, from up to the export layer.
ROOT_LAYER = LAYERS["export"]


def _modules():
    """(dotted name, path) of every module of the package."""
    for folder, _, files in os.walk(PACKAGE):
        for file in sorted(files):
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(["brevitas_dmx"] + parts), path


def _imports(name: str, path: str):
    """The brevitas_dmx modules that ``name`` imports, anywhere in its code."""
    yield from _imports_of_tree(name, path, ast.parse(open(path).read()))


def _imports_of_tree(name: str, path: str, tree):
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "brevitas_dmx")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "brevitas_dmx":
                continue
            for alias in node.names:  # ``from brevitas_dmx import distributed``: a module
                child = f"{module}.{alias.name}"
                top = child.split(".")[1] if "." in child else ""
                yield child if module == "brevitas_dmx" and top in LAYERS else module


def _layer(module: str) -> int:
    parts = module.split(".")
    return ROOT_LAYER if len(parts) == 1 else LAYERS[parts[1]]


def test_every_module_has_a_layer():
    tops = {name.split(".")[1] for name, _ in _modules() if "." in name}
    assert tops <= set(LAYERS), f"give these modules a layer in LAYERS: {tops - set(LAYERS)}"


def test_no_module_imports_a_higher_or_sideways_layer():
    wrong = []
    for name, path in _modules():
        if name == "brevitas_dmx":
            continue
        for imported in _imports(name, path):
            same_package = imported.split(".")[:2] == name.split(".")[:2]
            if not same_package and _layer(imported) >= _layer(name):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_command_line_module_imports_without_torch():
    code = "import sys, brevitas_dmx.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dmx_run_module_imports_without_onnx():
    """ONNX (the export extra) is imported only by the QONNX export and stock Brevitas's path."""
    code = "import sys, brevitas_dmx.llm; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


# Sizes past which a module of the run's package, or any function, should be split.
MAX_LLM_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_no_module_of_the_run_package_is_over_its_size():
    long = []
    for name, path in _modules():
        if name.startswith("brevitas_dmx.llm."):
            with open(path) as f:
                lines = len(f.read().splitlines())
            if lines > MAX_LLM_MODULE_LINES:
                long.append(f"{name}: {lines} lines")
    assert not long, "\n".join(long)


def test_no_function_is_over_its_size():
    long = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def _type_checking_only(path: str) -> set:
    """The line numbers of imports under ``if TYPE_CHECKING:``, which never run."""
    lines = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines |= {n.lineno for child in node.body for n in ast.walk(child)}
    return lines


def _runtime_imports(name: str, path: str):
    skipped = _type_checking_only(path)
    tree = ast.parse(open(path).read())
    kept = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    kept = [n for n in kept if n.lineno not in skipped]
    return list(_imports_of_tree(name, path, ast.Module(body=kept, type_ignores=[])))


def test_no_import_cycle_between_modules():
    graph = {name: set() for name, _ in _modules()}
    for name, path in _modules():
        for imported in _runtime_imports(name, path):
            target = imported
            while target not in graph and "." in target:  # ``from a.b import name``
                target = target.rsplit(".", 1)[0]
            if target in graph and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    state = {}

    def visit(node, path):
        state[node] = "open"
        for child in graph[node]:
            if state.get(child) == "open":
                return path + [child]
            if child not in state:
                cycle = visit(child, path + [child])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in graph:
        if node not in state:
            cycle = visit(node, [node])
            assert cycle is None, " -> ".join(cycle)
