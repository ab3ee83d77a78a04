"""One idiom for every extension point (criteria, compensations, model families, GELU classes): a `Registry`
maps names to entries, in registration order, and is read when used, so an entry registered from outside
the package, at any time, is seen everywhere (library calls, sweep methods, the CLI's choices)."""

from typing import Generic, Hashable, Iterator, TypeVar

from .errors import VbpError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """Named entries of one kind; `what` names the kind in messages ("criterion", "compensation", ...)."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[K, V] = {}

    def register(self, name: K, entry: V | None = None):
        """Add `entry` under `name` and return it; without `entry`, a decorator that registers what it decorates.
        A name already taken by another entry is refused (unregister it first)."""
        if entry is None:
            return lambda decorated: self.register(name, decorated)
        if name in self._entries and self._entries[name] != entry:
            raise VbpError(f"{self.what} '{name}' is already registered; unregister it first to replace it")
        self._entries[name] = entry
        return entry

    def unregister(self, name: K) -> V:
        """Remove `name` and return its entry."""
        return self._entries.pop(self._key(name))

    def get(self, name: K) -> V:
        return self._entries[self._key(name)]

    def name_of(self, entry: V) -> K:
        """The name `entry` is registered under (the first, if several)."""
        for name, registered in self._entries.items():
            if registered is entry:
                return name
        label = getattr(entry, "__name__", repr(entry))
        raise VbpError(f"{label} is not a registered {self.what}; register it under a name first")

    def names(self) -> tuple[K, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[V, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def _key(self, name: K) -> K:
        if name not in self._entries:
            known = ", ".join(map(str, self._entries)) or "none registered"
            raise VbpError(f"unknown {self.what} '{name}'; choose one of {known}")
        return name

