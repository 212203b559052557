"""Fixing a class a library instantiates itself (a pool's connections, a client's pool)."""

from __future__ import annotations

from functools import cache


@cache
def mixed_in(mixin: type, cls: type) -> type:
    """`cls` with `mixin` first in its MRO, made once per pair, under cls's name, to put on
    an object the library built (`obj.__class__`) or in the setting it builds from."""
    return type(cls.__name__, (mixin, cls), {})
