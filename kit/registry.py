"""One small registry for everything swappable by name (timm's ``register_model`` / ``create_model`` shape).

>>> LOSSES = Registry("loss")
>>> @LOSSES.register("focal")
... def focal(...): ...
>>> LOSSES.get("focall")   # ConfigError: unknown loss 'focall'. Did you mean 'focal'? Known: focal

Every registry made here is listed in ``REGISTRIES``, so one contract test can run over every entry of every one.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from kit.errors import ConfigError

__all__ = ["REGISTRIES", "Registry"]

T = TypeVar("T")

REGISTRIES: dict[str, Registry] = {}
"""Every registry by kind ("loss", "competition", ...), in creation order."""


class Registry(Generic[T]):
    """Named entries of one kind; ``get`` of an unknown name raises with the closest names and the known ones."""

    def __init__(self, kind: str):
        if kind in REGISTRIES:
            raise ConfigError(f"a registry of kind '{kind}' exists already")
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        REGISTRIES[kind] = self

    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``entry`` under ``name`` (and ``aliases``); a name taken twice is a bug, and raises."""
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ConfigError(f"{self.kind} '{key}' is registered twice")
        self._entries[name] = entry
        self._aliases.update({alias: name for alias in aliases})
        return entry

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(entry: T) -> T:
            self.add(name, entry, aliases)
            return entry

        return deco

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` or of the entry it is an alias of; unknown names raise."""
        name = str(name)
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise self.unknown(name)

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def unknown(self, name: str) -> ConfigError:
        """The error for a name that is not registered: closest matches, then every known name."""
        close = difflib.get_close_matches(str(name), [*self._entries, *self._aliases], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return ConfigError(f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Registered names (not aliases), in registration order."""
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __iter__(self) -> Iterator[str]:
        """Registered names, like a dict's keys."""
        return iter(list(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
