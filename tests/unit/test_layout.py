"""The process boundary is a module boundary: the HTTP side and the model side share only the contract.

app/web/* runs in LitServe's HTTP processes, app/worker/* in the model workers; each may import the
shared modules but never the other side, so what crosses the queue is visible in app/contract.py alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
# importable from both sides: what crosses the queue, the settings, the metrics, LitServe's adapter, and Silero's
# network (the worker's VAD over whole waveforms, live sessions' VAD over their streams)
SHARED = {"app.contract", "app.config", "app.metrics", "app.litserve_adapter", "app.silero"}
SIDES = ("app.web", "app.worker")
# LitServe names that are not its public API; they may appear in app/litserve_adapter.py only
LITSERVE_PRIVATE = (
    "response_buffer", "request_queue", "response_queue_id", "ResponseBufferItem", "LitAPIStatus",
    "_start_worker_monitoring", "_perform_graceful_shutdown", "_shutdown_event", "_endpoints",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_imports(path: Path) -> set[str]:
    """Every app.* module that `path` imports, by absolute name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("app"))
    modules = {module_name(p) for p in APP.rglob("*.py")}
    return {name for name in names if name in modules}


def side_of(module: str) -> str | None:
    return next((side for side in SIDES if module == side or module.startswith(side + ".")), None)


SIDE_MODULES = sorted(p for side in SIDES for p in (APP / side.split(".")[1]).rglob("*.py"))


@pytest.mark.parametrize("path", SIDE_MODULES, ids=lambda p: module_name(p))
def test_each_side_imports_only_itself_and_the_shared_modules(path: Path) -> None:
    own = side_of(module_name(path))
    foreign = {name for name in app_imports(path) if side_of(name) not in (own, None)}
    assert not foreign, f"{module_name(path)} imports the other side: {sorted(foreign)}"
    root = {name for name in app_imports(path) if side_of(name) is None and name not in SHARED | {"app"}}
    assert not root, f"{module_name(path)} imports the main process's wiring: {sorted(root)}"


@pytest.mark.parametrize("shared", sorted(SHARED - {"app.litserve_adapter"}))
def test_the_shared_modules_import_neither_side(shared: str) -> None:
    path = APP / (shared.split(".")[1] + ".py")
    assert not {name for name in app_imports(path) if side_of(name)}, f"{shared} imports a side"


def test_litserve_internals_are_named_in_the_adapter_alone() -> None:
    users = {
        module_name(path): [name for name in LITSERVE_PRIVATE if name in path.read_text()]
        for path in APP.rglob("*.py")
        if path.name != "litserve_adapter.py"
    }
    assert not {module: names for module, names in users.items() if names}
