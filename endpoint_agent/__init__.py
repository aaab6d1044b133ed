"""The endpoint agent: broker link, ZeroMQ interchange and scaling (not yet built; see issue 3)."""

from __future__ import annotations

__all__: list[str] = []
