"""`conforms`: `isinstance` against a runtime-checkable Protocol, without its cost.

On Python 3.11 `isinstance(obj, SomeProtocol)` walks the protocol's members on every call
(~30 µs for the memory store's); the runtime asks it of objects made per turn (a worker's
memory store, checkpointer), so per-object caching does not help. A class that has the
methods answers `issubclass` from the ABC cache instead (well under a microsecond), and
for a Protocol of methods only that answer is isinstance's own first test.
"""

from __future__ import annotations

__all__ = ["conforms"]


def conforms(obj: object, protocol: type) -> bool:
    """`isinstance(obj, protocol)` for a runtime-checkable Protocol whose members are all
    methods: the class-level answer when the class has them, else the full check (an
    instance may carry the methods itself)."""
    return issubclass(type(obj), protocol) or isinstance(obj, protocol)
