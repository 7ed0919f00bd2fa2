"""Services and tasks without import cycles, and layers that point one way (issue 16).

Tasks import services; services send tasks by name through ``interconnect.tasking``. The import
graph is read from the source (every ``import``, module-level or inside a function, since a
function-level import is still an edge a refactoring can close into a cycle), so the test needs
no database and runs in well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from interconnect import tasking

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("interconnect", "registry", "verification", "brokers", "agent", "rpckit", "protos")
# The layers point one way (brokers -> verification -> registry); what each may never import.
# The agent, the gRPC plumbing and the error catalog run without Django (the agent ships alone).
FORBIDDEN = {
    "registry": {"verification", "brokers"},
    "verification": {"brokers"},
    "agent": {"interconnect", "registry", "verification", "brokers"},
    "rpckit": {"interconnect", "registry", "verification", "brokers", "agent"},
    "protos": {"interconnect", "registry", "verification", "brokers", "agent", "rpckit"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the project's modules it imports}``, from every import statement."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import mod`` imports the module pkg.mod where there is one.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _is_tasks(module: str) -> bool:
    return module.rpartition(".")[2] == "tasks"


def _is_service(module: str) -> bool:
    return module.rpartition(".")[2] in {"services", "selectors", "webhooks", "dispatch"}


def test_no_service_imports_a_task_module() -> None:
    graph = import_graph()
    offenders = {
        m: sorted(t for t in targets if _is_tasks(t))
        for m, targets in graph.items()
        if _is_service(m) and any(_is_tasks(t) for t in targets)
    }
    assert offenders == {}, f"services must send tasks by name (interconnect.tasking): {offenders}"


def test_no_cycle_between_services_and_tasks() -> None:
    graph = import_graph()
    assert any(_is_tasks(m) for m in graph) and any(_is_service(m) for m in graph)
    tangled = [
        sorted(c) for c in cycles(graph) if any(map(_is_tasks, c)) and any(map(_is_service, c))
    ]
    assert tangled == []


def _layer_offences(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    return {
        module: sorted(bad)
        for module, targets in graph.items()
        if (
            bad := {
                t for t in targets if t.split(".")[0] in FORBIDDEN.get(module.split(".")[0], ())
            }
        )
    }


def test_the_layers_point_one_way() -> None:
    """verification never imports brokers, registry neither: what both gRPC servers share (the
    interceptors) lives in ``registry.rpc``; the agent, ``rpckit`` and ``protos`` stay free of
    Django."""
    graph = import_graph()
    assert "registry.rpc" in graph["verification.rpc.telemetry"]
    assert "registry.rpc" in graph["brokers.rpc.server"]
    assert _layer_offences(graph) == {}


def test_the_layer_check_finds_a_planted_offence() -> None:
    graph = import_graph()
    graph["verification.rpc.telemetry"].add("brokers.rpc.server")
    assert _layer_offences(graph) == {"verification.rpc.telemetry": ["brokers.rpc.server"]}


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    """The adversary: a service that imports its task module again is caught."""
    graph = import_graph()
    assert "brokers.services" in graph["brokers.tasks"]
    graph["brokers.services"].add("brokers.tasks")
    assert any({"brokers.services", "brokers.tasks"} <= c for c in cycles(graph))


def _task_names_sent_by_services() -> dict[str, str]:
    """Every ``*_TASK`` name constant of the modules that enqueue through ``tasking``."""
    names = {}
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.endswith("_TASK")
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                names[f"{module}.{node.targets[0].id}"] = node.value.value
    return names


def test_every_task_name_a_service_sends_is_a_registered_task() -> None:
    """A task renamed without its sender would publish messages no worker runs."""
    sent = _task_names_sent_by_services()
    assert len(sent) >= 5
    unknown = {}
    for constant, name in sent.items():
        try:
            tasking.registered(name)
        except KeyError:
            unknown[constant] = name
    assert unknown == {}
    with pytest.raises(KeyError):
        tasking.registered("brokers.tasks.no_such_task")


@pytest.mark.django_db
def test_enqueue_on_commit_sends_after_commit_and_nothing_on_rollback(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, tuple[object, ...]]] = []
    task = tasking.registered("brokers.tasks.booking_stop")
    monkeypatch.setattr(task, "apply_async", lambda args, **kw: sent.append((task.name, args)))
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            tasking.enqueue_on_commit("brokers.tasks.booking_stop", 1)
            raise RuntimeError("rolled back")
        with transaction.atomic():
            tasking.enqueue_on_commit("brokers.tasks.booking_stop", 2)
            assert sent == []  # not before the commit
    assert sent == [("brokers.tasks.booking_stop", (2,))]
