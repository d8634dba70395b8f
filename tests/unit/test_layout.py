"""The process boundary is a module boundary: the HTTP side and the model side share only the contract.

app/web/* runs in LitServe's HTTP processes, app/worker/* in the model workers; each may import the
shared modules but never the other side, so what crosses the queue is visible in app/contract.py alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
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


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every module `path` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


WEB_MODULES = sorted((APP / "web").rglob("*.py"))


@pytest.mark.parametrize("path", WEB_MODULES, ids=lambda p: module_name(p))
def test_the_web_side_does_not_import_openai_whisper(path: Path) -> None:
    # the sample rate, hop and languages come from the contract: an HTTP process needs no openai-whisper
    assert "whisper" not in top_level_imports(path), f"{module_name(path)} imports openai-whisper"


def test_importing_every_web_module_loads_no_openai_whisper() -> None:
    modules = [module_name(path) for path in WEB_MODULES]
    program = "\n".join(
        [
            "import importlib, sys",
            f"for name in {modules!r}: importlib.import_module(name)",
            "print('whisper' in sys.modules)",
        ]
    )
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=APP.parent)
    assert loaded.stdout.strip() == "False"


REPOSITORY = APP.parent
# tests and scripts share their helpers through harness/, and never import each other
NEVER_IMPORTS = {"tests": {"scripts"}, "scripts": {"tests"}, "harness": {"tests", "scripts"}}
TOOLING_MODULES = sorted(p for folder in NEVER_IMPORTS for p in (REPOSITORY / folder).rglob("*.py"))


@pytest.mark.parametrize("path", TOOLING_MODULES, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_tests_and_scripts_share_helpers_through_harness_alone(path: Path) -> None:
    folder = path.relative_to(REPOSITORY).parts[0]
    crossed = top_level_imports(path) & NEVER_IMPORTS[folder]
    assert not crossed, f"{path.relative_to(REPOSITORY)} imports {sorted(crossed)}: share it through harness/"
