"""A small name -> object table, the one registry pattern behind data formats and metrics.

Why a class and not a bare dict: every lookup of an unknown name must fail with a user-facing
error that lists the registered names (sorted, like tevatron's ``get_template``), aliases must
resolve to the same entry, and a second registration under a taken name must be an error rather
than silently replacing a built-in (a plug-in that shadows ``map`` would change every report).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hybrid_ray.errors import HybridRayError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name (plus aliases), kept in registration order.

    ``error`` builds the exception raised for an unknown or duplicate name from a message and
    the offending name, so each registry raises its own error class (DataError for formats,
    ConfigError for metrics) naming the field the user got wrong. ``loader`` is called once,
    before the first lookup, to import the modules that register the built-in entries.
    """

    def __init__(
        self,
        kind: str,
        error: Callable[[str, str], HybridRayError],
        loader: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self._error = error
        self._loader = loader
        self._loaded = loader is None
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the loaded modules register into this registry
            assert self._loader is not None
            self._loader()

    def register(self, name: str, entry: T, aliases: tuple[str, ...] = (), *, replace: bool = False) -> T:
        """Add ``entry`` under ``name`` (and ``aliases``); a taken name is an error unless ``replace``."""
        for key in (name, *aliases):
            taken = self._aliases.get(key, key if key in self._entries else None)
            if taken is not None and not (replace and taken == name):
                raise self._error(f"{self.kind} {key!r} is already registered", key)
        if replace:
            self._drop(name)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def _drop(self, name: str) -> None:
        self._entries.pop(name, None)
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]

    def unregister(self, name: str) -> T:
        """Remove ``name`` and its aliases (tests and plug-ins that clean up after themselves)."""
        entry = self.get(name)
        self._drop(self._aliases.get(name, name))
        return entry

    def find(self, name: str) -> T | None:
        """The entry for ``name`` or an alias of it, None when unknown."""
        self._ensure_loaded()
        return self._entries.get(self._aliases.get(name, name))

    def get(self, name: str) -> T:
        """The entry for ``name``; an unknown name raises the registry's error listing the known ones."""
        entry = self.find(name)
        if entry is None:
            raise self._error(f"unknown {self.kind} (registered: {', '.join(self.names())})", name)
        return entry

    def names(self, *, aliases: bool = False) -> list[str]:
        """Registered names, sorted; with ``aliases`` the aliases too."""
        self._ensure_loaded()
        return sorted([*self._entries, *(self._aliases if aliases else ())])

    def values(self) -> list[T]:
        """Entries in registration order (the order tables and reports list them in)."""
        self._ensure_loaded()
        return list(self._entries.values())

    def __iter__(self) -> Iterator[T]:
        return iter(self.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None
