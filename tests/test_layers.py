"""The package is a one-way house: every import (top-level or inside a function) points down, none in a circle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medcls"

# Each part of the package and its layer: a module may import its own part and any lower layer.
# files -> io -> modalities -> data -> features / models -> infer / run folder / explain -> evaluate
#       -> train / classical -> runs -> cluster / explain_run -> cli (and the package's facade)
LAYERS = {
    "medcls.errors": 0, "medcls._version": 0,
    "medcls._atomic": 1,  # atomic writes, raising errors' WriteError
    "medcls.distributed": 1,  # torchrun's processes: who this one is, the collectives
    "medcls.io": 2,
    "medcls.modalities": 3,
    "medcls.data": 4,
    "medcls.features": 5, "medcls.models": 5,
    "medcls.infer": 6, "medcls.run_folder": 6, "medcls.explain": 6,
    "medcls.evaluate": 7,
    "medcls.train": 8, "medcls.classical": 8,
    "medcls.runs": 9,
    "medcls.cluster": 10, "medcls.explain_run": 10, "medcls.batch": 10,
    "medcls.serve": 11,
    "medcls.cli": 12, "medcls": 12,
    "medcls.__main__": 13,  # python -m medcls: the command line itself
}
# Narrower than the layers allow: a network knows nothing of files or datasets (torchvision's models/
# never imports datasets/).
ONLY = {"medcls.models": {"medcls.errors", "medcls._atomic", "medcls._version"}}


def _module_name(path: Path) -> str:
    parts = ["medcls", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The module a dotted import name lands in (``medcls.data.load_dataset`` -> ``medcls.data``)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    """Every medcls module ``module`` imports, wherever the import statement stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
            names = [n if _resolve(n) not in (None, module) else base for n in names]
        else:
            continue
        out |= {r for n in names if n.startswith("medcls") and (r := _resolve(n)) and r != module}
    return out


def _part(module: str) -> str:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def test_every_module_belongs_to_a_layer():
    assert {m for m in MODULES if _part(m) == "medcls"} == {"medcls"}, "a new top-level module needs a layer"


def test_no_import_points_up_or_sideways():
    wrong = []
    for m in MODULES:
        here = _part(m)
        for dep in imports_of(m):
            there = _part(dep)
            if there == here:
                continue
            if LAYERS[there] >= LAYERS[here] or (here in ONLY and there not in ONLY[here]):
                wrong.append(f"{m} imports {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """A deferred import that hides a cycle is still an import."""
    assert "medcls.runs" in imports_of("medcls.cli")  # only imported inside the commands
    assert "medcls.classical" in imports_of("medcls.runs")  # only inside ClassicalRun.pipeline
