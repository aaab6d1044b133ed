"""Packages whose public names are imported on first use (start-up time of the processes that
import the package only for one of its modules, e.g. each worker process)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, sources: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package`: name -> the module it is imported from, once
    (the value is then kept in the package, so later lookups do not come here)."""
    namespace = sys.modules[package].__dict__

    def lookup(name: str) -> object:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    return lookup
