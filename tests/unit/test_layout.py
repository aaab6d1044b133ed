"""The package's layering, checked over the source of every module (ast, no imports).

Four rules (see README.md "Layout" and shared/ARCHITECTURE.md):

1. **Layers.** Each module may import only the layers its own layer allows (`ALLOWED_LAYERS`).
   The kernel's ground floor (protocol, transport, errors, settings, ...) imports no component and
   nothing above it; a component imports the ground floor, itself and the few components the
   table names; the forwarder and the manager are imported by no other component; the tools
   (`taskfabric.tools`) may import every component and are imported by nothing.
2. **Exceptions** to rule 1 are listed one by one in `LAYER_EXCEPTIONS`, each with its reason.
3. **Third-party transports.** pika, aio_pika, zmq, sqlalchemy, globus_sdk and parsl are imported
   only by the modules `TRANSPORT_MODULES` names for each.
4. **Unpickling.** Only the worker's execution module and the client's serialization module call
   `pickle`/`cloudpickle` `loads`/`load`/`Unpickler`; nothing imports `dill`.

A violation names the file, the line and the rule it broke.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: folder -> the package it is mapped to (setup.cfg `package_dir`)
PACKAGE_DIRS: dict[str, str] = {
    "taskfabric": "taskfabric",
    "broker_config": "taskfabric.broker_config",
    "forwarder": "taskfabric.forwarder",
    "endpoint_agent": "taskfabric.endpoint_agent",
    "client": "taskfabric.client",
    "manager": "taskfabric.manager",
}

#: the kernel's ground floor: what every component may build on
GROUND_FLOOR = (
    "taskfabric",  # the package itself (`__version__`)
    "taskfabric.protocol",
    "taskfabric.transport",
    "taskfabric.errors",
    "taskfabric.exit_codes",
    "taskfabric.ids",
    "taskfabric.logs",
    "taskfabric.paths",
    "taskfabric.settings",
    "taskfabric.gc_tuning",
    "taskfabric.malloc_tuning",
    "taskfabric.daemon",
    "taskfabric.inbox",
    "taskfabric.conform",
    "taskfabric.processes",
    "taskfabric.zmq_poll",
    "taskfabric.wake_pipe",
    "taskfabric.tls",
)
#: the kernel's top floor: the root CLI and the shared test harness, above every component
TOP_FLOOR = ("taskfabric.cli", "taskfabric.__main__", "taskfabric.testing")
#: whole-fabric tools (`taskfabric dev`, `taskfabric bench`): above everything, imported by nothing
TOOLS = "taskfabric.tools"
COMPONENTS = ("broker_config", "forwarder", "endpoint_agent", "client", "manager")

#: layer -> the layers its modules may import
ALLOWED_LAYERS: dict[str, frozenset[str]] = {
    "ground": frozenset({"ground"}),
    "broker_config": frozenset({"ground", "broker_config"}),
    # the client runs in the researcher's Python: the kernel and itself, nothing else
    "client": frozenset({"ground", "client"}),
    # the manager runs on compute nodes: the kernel and itself (no parsl, no broker, no SQL)
    "manager": frozenset({"ground", "manager"}),
    # the agent declares nothing, but its test harness and queues follow the broker's topology;
    # `taskfabric endpoint register` talks to the forwarder through the client library
    "endpoint_agent": frozenset({"ground", "endpoint_agent", "broker_config", "client"}),
    # the forwarder administers the broker (topology, users)
    "forwarder": frozenset({"ground", "forwarder", "broker_config"}),
    "top": frozenset({"ground", "top", *COMPONENTS}),
    # the root CLI names their commands as strings and imports them on first use
    "tools": frozenset({"ground", "top", "tools", *COMPONENTS}),
}

#: (importing module, imported layer) -> why it is allowed although the table above says no
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {
    # the components' test harnesses build on the shared one (bounded waits, a broker for tests)
    ("taskfabric.forwarder.testing.process", "top"): "test harness: uses taskfabric.testing (wait_until)",
    ("taskfabric.forwarder.testing.haproxy", "top"): "test harness: uses taskfabric.testing (wait_until)",
    ("taskfabric.endpoint_agent.testing", "top"): "test harness: uses taskfabric.testing (broker_for_tests)",
}

#: third-party transport -> the only modules that may import it (a trailing ".*" = a whole package)
TRANSPORT_MODULES: dict[str, tuple[str, ...]] = {
    "pika": ("taskfabric.transport.rabbitmq.*",),
    "aio_pika": (),
    "zmq": ("taskfabric.zmq_poll", "taskfabric.endpoint_agent.zmq_router", "taskfabric.manager.zmq_link"),
    "sqlalchemy": ("taskfabric.forwarder.store.*",),
    "globus_sdk": ("taskfabric.forwarder.auth.globus",),
    "boto3": ("taskfabric.forwarder.blobs.s3",),
    "botocore": ("taskfabric.forwarder.blobs.s3",),
    "parsl": ("taskfabric.endpoint_agent.blocks", "taskfabric.endpoint_agent.providers.*"),
}

#: the only modules that unpickle: the worker's execution (user payloads) and the client (its own results)
UNPICKLING_MODULES = ("taskfabric.manager.execution", "taskfabric.client.serialization")
_PICKLE_MODULES = ("pickle", "cloudpickle", "dill", "_pickle")
_UNPICKLE_NAMES = ("loads", "load", "Unpickler")


@dataclasses.dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.detail}"


@dataclasses.dataclass(frozen=True)
class SourceModule:
    path: str  # relative to the repository
    name: str  # dotted module name in the taskfabric namespace
    tree: ast.Module


def module_name(relative: Path) -> str:
    folder, *rest = relative.parts
    parts = [PACKAGE_DIRS[folder], *rest]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> list[SourceModule]:
    modules = []
    for folder in PACKAGE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            modules.append(SourceModule(str(relative), module_name(relative), ast.parse(path.read_text(), str(path))))
    return modules


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> str | None:
    """The layer of a taskfabric module (None for third-party names)."""
    for component in COMPONENTS:
        if _within(name, f"taskfabric.{component}"):
            return component
    if _within(name, TOOLS):
        return "tools"
    if any(_within(name, top) for top in TOP_FLOOR):
        return "top"
    if any(_within(name, ground) for ground in GROUND_FLOOR):
        return "ground"
    if _within(name, "taskfabric"):
        return "unlisted"
    return None


def imports(module: SourceModule) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import, also inside functions; relative ones resolved.
    `from package import name` yields `package.name` too, since `name` may be a submodule."""
    is_package = module.path.endswith("__init__.py")
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def layer_violations(module: SourceModule) -> list[Violation]:
    own = layer_of(module.name)
    if own == "unlisted":
        return [Violation(module.path, 1, "layers", f"{module.name} is in no layer: add it to test_layout.py")]
    assert own is not None
    found = []
    seen: set[tuple[int, str]] = set()
    for line, target in imports(module):
        layer = layer_of(target)
        if layer is None or layer == "unlisted" or layer in ALLOWED_LAYERS[own] or (line, layer) in seen:
            continue
        if (module.name, layer) in LAYER_EXCEPTIONS:
            continue
        seen.add((line, layer))
        found.append(
            Violation(module.path, line, "layers", f"{module.name} ({own}) imports {target} ({layer}), not allowed")
        )
    return found


def _allowed(name: str, patterns: tuple[str, ...]) -> bool:
    return any(_within(name, p[:-2]) if p.endswith(".*") else name == p for p in patterns)


def transport_violations(module: SourceModule) -> list[Violation]:
    found = []
    for line, target in imports(module):
        top = target.split(".")[0]
        if top in TRANSPORT_MODULES and not _allowed(module.name, TRANSPORT_MODULES[top]):
            allowed = ", ".join(TRANSPORT_MODULES[top]) or "no module"
            found.append(Violation(module.path, line, "transports", f"imports {target}; only {allowed} may"))
    return found


def _pickle_bindings(module: SourceModule) -> tuple[set[str], set[str], list[Violation]]:
    """(names bound to a pickle module, names bound to an unpickling function, import violations)."""
    aliases: set[str] = set()
    direct: set[str] = set()
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in _PICKLE_MODULES:
                    aliases.add(alias.asname or alias.name)
                if top == "dill":
                    found.append(Violation(module.path, node.lineno, "unpickling", "imports dill"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            for alias in node.names:
                if alias.name in _UNPICKLE_NAMES:
                    direct.add(alias.asname or alias.name)
                    found.append(
                        Violation(module.path, node.lineno, "unpickling", f"imports {node.module}.{alias.name}")
                    )
    return aliases, direct, found


def _unpickling_call(node: ast.Call, aliases: set[str], direct: set[str]) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.attr in _UNPICKLE_NAMES and func.value.id in aliases:
            return f"{func.value.id}.{func.attr}"
    elif isinstance(func, ast.Name) and func.id in direct:
        return func.id
    return None


def unpickling_violations(module: SourceModule) -> list[Violation]:
    if module.name in UNPICKLING_MODULES:
        return []
    aliases, direct, found = _pickle_bindings(module)
    for node in ast.walk(module.tree):
        called = _unpickling_call(node, aliases, direct) if isinstance(node, ast.Call) else None
        if called is not None:
            found.append(Violation(module.path, node.lineno, "unpickling", f"calls {called}"))
    return found


RULES = {
    "layers": layer_violations,
    "transports": transport_violations,
    "unpickling": unpickling_violations,
}


@pytest.fixture(scope="module")
def modules() -> list[SourceModule]:
    found = package_modules()
    assert len(found) > 100, "the package's modules were not found"
    return found


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_holds_for_every_module(rule: str, modules: list[SourceModule]) -> None:
    violations = [v for module in modules for v in RULES[rule](module)]
    assert not violations, f"{len(violations)} violation(s) of rule {rule!r}:\n" + "\n".join(map(str, violations))


def test_every_module_is_in_a_layer(modules: list[SourceModule]) -> None:
    unlisted = [module.path for module in modules if layer_of(module.name) == "unlisted"]
    assert not unlisted, f"modules in no layer (add them to GROUND_FLOOR or TOP_FLOOR): {unlisted}"


def test_exceptions_and_allowed_modules_exist(modules: list[SourceModule]) -> None:
    """The tables name real modules, so a rename cannot leave a stale exception behind."""
    names = {module.name for module in modules}
    stale = [name for name, _layer in LAYER_EXCEPTIONS if name not in names]
    stale += [p for ps in TRANSPORT_MODULES.values() for p in ps if not p.endswith(".*") and p not in names]
    stale += [name for name in UNPICKLING_MODULES if name not in names]
    assert not stale, f"tables in test_layout.py name modules that do not exist: {stale}"


# --- the checker itself finds what it must (each case is a violation it has to report) -------------


def _source(path: str, name: str, text: str) -> SourceModule:
    return SourceModule(path, name, ast.parse(text))


@pytest.mark.parametrize(
    ("path", "name", "text", "rule", "line"),
    [
        ("taskfabric/ids.py", "taskfabric.ids", "import os\nfrom taskfabric.forwarder import store\n", "layers", 2),
        ("taskfabric/protocol/x.py", "taskfabric.protocol.x", "from ..testing import wait_until\n", "layers", 1),
        ("taskfabric/testing/x.py", "taskfabric.testing.x", "from taskfabric.tools import bench\n", "layers", 1),
        ("client/x.py", "taskfabric.client.x", "import taskfabric.tools.devfabric\n", "layers", 1),
        ("client/x.py", "taskfabric.client.x", "def f():\n    import taskfabric.manager.pool\n", "layers", 2),
        ("endpoint_agent/x.py", "taskfabric.endpoint_agent.x", "from taskfabric import forwarder\n", "layers", 1),
        ("manager/x.py", "taskfabric.manager.x", "from taskfabric.endpoint_agent import ledger\n", "layers", 1),
        ("forwarder/x.py", "taskfabric.forwarder.x", "import pika\n", "transports", 1),
        ("endpoint_agent/agent.py", "taskfabric.endpoint_agent.agent", "import zmq.asyncio\n", "transports", 1),
        ("client/x.py", "taskfabric.client.x", "from sqlalchemy import text\n", "transports", 1),
        ("forwarder/x.py", "taskfabric.forwarder.x", "import cloudpickle\ncloudpickle.loads(b'')\n", "unpickling", 2),
        ("forwarder/x.py", "taskfabric.forwarder.x", "import pickle as p\n\n\np.loads(b'')\n", "unpickling", 4),
        ("endpoint_agent/x.py", "taskfabric.endpoint_agent.x", "from pickle import loads\n", "unpickling", 1),
        ("manager/pool.py", "taskfabric.manager.pool", "import dill\n", "unpickling", 1),
    ],
)
def test_checker_reports_a_violation(path: str, name: str, text: str, rule: str, line: int) -> None:
    violations = RULES[rule](_source(path, name, text))
    assert [v.line for v in violations][:1] == [line], violations
    assert str(violations[0]).startswith(f"{path}:{line}: [{rule}]")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("taskfabric.manager.execution", "import cloudpickle\ncloudpickle.loads(b'')\n"),
        ("taskfabric.client.serialization", "import cloudpickle\ncloudpickle.loads(b'')\n"),
        ("taskfabric.forwarder.x", "import cloudpickle\ncloudpickle.dumps(1)\n"),
        ("taskfabric.transport.rabbitmq.publishing", "import pika\n"),
        ("taskfabric.forwarder.store.tasks", "import sqlalchemy\n"),
        ("taskfabric.endpoint_agent.x", "from taskfabric.broker_config import Topology\n"),
        ("taskfabric.tools.devfabric", "from taskfabric.forwarder import settings\n"),
        ("taskfabric.tools.bench", "from taskfabric.tools.devfabric import dev_up\n"),
    ],
)
def test_checker_allows_what_the_tables_allow(name: str, text: str) -> None:
    source = _source("x.py", name, text)
    assert [v for rule in RULES.values() for v in rule(source)] == []
