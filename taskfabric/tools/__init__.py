"""Whole-fabric tools: `taskfabric dev` (a local fabric for trying things out, `devfabric`) and
`taskfabric bench` (how fast the fabric is, end to end, `bench`).

They sit above every component: they start a broker, a forwarder and an endpoint and drive them
through the client. They may import any component; nothing in the package imports them (the root
CLI loads their commands by name, on first use). State: the dev fabric's folder under
`$TASKFABRIC_HOME/dev`; none of their own otherwise.
"""

from __future__ import annotations

__all__: list[str] = []
