"""``Answers``: the bounded memory of decisions and selections that repeated maps ask again."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Answers(dict[K, V]):
    """A dict of remembered answers that forgets them all once it holds ``size`` of them.

    Cleared at once rather than evicted one by one: a process asks its questions again in
    small sets, so a full memory is rare, and a lookup costs no more than a dict's.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` (forgetting everything first when full); return it."""
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


__all__ = ["Answers"]
