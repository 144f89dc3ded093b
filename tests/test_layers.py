"""The package's layers: no module imports from a layer above its own, nothing imports in a cycle, and no
module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import muse_stream

PKG = Path(muse_stream.__file__).parent
# Lower number = lower layer. A module may import from its own layer or any lower one.
LAYERS = {
    "errors": 0, "eventtime": 0, "tomlwrite": 0, "config": 0, "bandspec": 0, "deployspec": 0, "featurespec": 0, "frozen": 0, "logs": 0,
    "kafka": 1,
    "models": 2, "tenants": 2, "state": 2,
    "scoring": 3,
    "telemetry": 4, "analysis": 4,
    "worker": 5, "deploy": 5,
    "bench": 6, "demo": 6,
    "commands": 7, "cli": 7, "__main__": 7,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    mods = _modules()
    return {m for m in found if m in mods and m != name}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package itself (__version__)
    return LAYERS[parts[1]]


def test_every_module_has_a_layer():
    unknown = sorted(m for m in _modules() if m != "muse_stream" and m.split(".")[1] not in LAYERS)
    assert not unknown, f"modules outside any layer: {unknown}"


def test_no_import_from_a_higher_layer():
    bad = []
    for name, path in _modules().items():
        if name == "muse_stream":
            continue
        for dep in _imports(name, path):
            if _layer(dep) > _layer(name):
                bad.append(f"{name} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


def test_engine_imports_nothing_above_itself():
    for name, path in _modules().items():
        if name.startswith("muse_stream.kafka"):
            deps = {d.split(".")[1] for d in _imports(name, path) if "." in d}
            assert deps <= {"errors", "eventtime", "config", "kafka"}, (name, deps)


def test_no_import_cycle():
    mods = _modules()
    graph = {n: {d for d in _imports(n, p) if d != "muse_stream"} for n, p in mods.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(n: str, stack: list[str]) -> bool:
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [n, d] if d in stack else [n, d])
                return True
            if d not in state and visit(d, [*stack, n]):
                return True
        state[n] = 2
        return False

    for n in graph:
        if n not in state and visit(n, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_module_over_400_lines():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: c for n, c in big.items() if c > 400}, {n: c for n, c in big.items() if c > 400}
