"""Parsl's providers and launchers without the rest of Parsl, for a faster agent start.

`import parsl.providers` first runs `parsl/__init__.py`, which imports Parsl's whole workflow
engine (the DataFlowKernel, every executor, monitoring, SQLAlchemy): about 0.4 s of CPU of the
agent's 0.85 s start on the 2-core test machine (`python -X importtime`), paid on every
`endpoint start`, for classes the agent never uses. The agent needs only providers, launchers and
job states, which do not depend on that `__init__`.

`defer_parsl_init()` registers `parsl` as a package with its real search path and spec, so its
submodules import as usual, and runs the real `__init__` the first time anything asks the package
itself for an attribute (`parsl.Config`, `parsl.__version__`, `from parsl import python_app`):
code that wants all of Parsl still gets it, only later.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types

__all__ = ["defer_parsl_init"]

_lock = threading.Lock()


def defer_parsl_init() -> None:
    """Install the deferred `parsl` package unless Parsl is imported already (or not installed:
    the ordinary import then fails where it is used, naming the missing package)."""
    with _lock:
        if "parsl" in sys.modules:
            return
        spec = importlib.util.find_spec("parsl")
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return
        package = importlib.util.module_from_spec(spec)
        package.__dict__["__getattr__"] = _run_init_on_first_lookup(package, spec)
        sys.modules["parsl"] = package


def _run_init_on_first_lookup(package: types.ModuleType, spec: importlib.machinery.ModuleSpec) -> object:
    def lookup(name: str) -> object:
        if name.startswith("__") and name not in {"__version__", "__all__", "__author__"}:
            raise AttributeError(name)  # probes for dunders (pickle, inspect) need not load Parsl
        with _lock:
            if package.__dict__.pop("__getattr__", None) is not None:
                assert spec.loader is not None
                spec.loader.exec_module(package)
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'parsl' has no attribute {name!r}") from None

    return lookup
