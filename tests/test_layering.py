"""The layering rule of docs/architecture.md, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {"drivers": {"controller", "county"}, "simulator": {"controller", "drivers", "county"},
             "controller": {"county"}, "webcommon": {"controller", "county", "drivers", "simulator"}}
"""The gateway and the county centre are separate services: the gateway never imports the county
(only the one ``ebc`` command line, controller/app/cli.py, dispatches ``ebc county`` to it). Both
may import ``webcommon`` (the web consoles' shared static files and where they are), which imports
neither."""
ENTRY_POINT = "controller/app/cli.py"
COUNTY_MAY_IMPORT = {"controller.uplink.signing"}
"""The county centre reaches gateways only through the MQTT contract and the signed-command format;
from the gateway's code it shares only the signing module (the exact signed bytes, key loading).
Its console's front-end core comes from ``webcommon`` (a neutral package of static files, not the
gateway's), which this rule leaves open."""


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_layers(package: str):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    offenders = {str(f.relative_to(REPO)): sorted(_imported_packages(f) & FORBIDDEN[package]) for f in files
                 if str(f.relative_to(REPO)) != ENTRY_POINT}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_the_county_centre_imports_no_gateway_internals():
    offenders = {}
    for path in sorted((REPO / "county").rglob("*.py")):
        modules: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module)
        bad = sorted(m for m in modules if m.split(".")[0] in {"controller", "drivers"}
                     and m not in COUNTY_MAY_IMPORT)
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert offenders == {}


# ---------------------------------------------------------------------------------------------
# Inside controller/: one room per concern (docs/architecture.md)

CONTROLLER = REPO / "controller"
TOP_LAYERS = {"api", "app"}
"""The API and the app layer (daemon, CLI, demo) may import everything; nothing imports them,
except that the app layer starts the API."""
ENGINE_INSIDES = {"engine", "activation", "evidence", "release", "program", "scheduler"}
"""Alerts and the uplink reach the engine only through ``controller.broadcast.ports`` (and the
broadcast vocabulary: model, targets), never its insides."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _controller_imports(path: Path) -> set[str]:
    """Modules of controller/ that ``path`` imports at run time (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("controller."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("controller."):
            found.add(str(node.module))
            found.update(f"{node.module}.{a.name}" for a in node.names)
    modules = {_module_name(p) for p in CONTROLLER.rglob("*.py")}
    return {m for m in found if m in modules} - {_module_name(path)}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _controller_imports(p) for p in sorted(CONTROLLER.rglob("*.py"))}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else parts[-1]


def test_nothing_below_imports_the_api_or_the_app_layer():
    offenders = {m: sorted(d for d in deps if _room(d) in TOP_LAYERS and _room(d) != _room(m))
                 for m, deps in _graph().items() if _room(m) not in TOP_LAYERS}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_api_does_not_import_the_app_layer():
    offenders = {m: sorted(d for d in deps if _room(d) == "app")
                 for m, deps in _graph().items() if _room(m) == "api"}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_alerts_and_uplink_reach_the_engine_only_through_its_ports():
    insides = {f"controller.broadcast.{name}" for name in ENGINE_INSIDES}
    offenders = {m: sorted(deps & insides) for m, deps in _graph().items()
                 if _room(m) in {"alerts", "uplink"}}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_import_cycle_between_controller_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []
