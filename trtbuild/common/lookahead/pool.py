"""The n-gram pool of lookahead decoding: a pure data structure, one per request.

Keyed by a token; each key holds at most G continuations of N - 1 tokens, least recently inserted
first: inserting an existing n-gram moves it to the newest end, inserting into a full key evicts
the oldest. Candidates for verification are the newest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class NgramPool:
    def __init__(self, ngram_size: int, capacity: int) -> None:
        if ngram_size < 2 or capacity < 0:
            raise ValueError(f"pool needs ngram_size >= 2 and capacity >= 0, got {ngram_size}, {capacity}")
        self.n, self.capacity = ngram_size, capacity
        self._map: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, key: int, continuation: Sequence[int]) -> None:
        """Insert key -> continuation (N - 1 tokens)."""
        cont = tuple(continuation)
        if len(cont) != self.n - 1:
            raise ValueError(f"continuation must have {self.n - 1} tokens, got {len(cont)}")
        if self.capacity == 0:
            return
        entry = self._map.setdefault(key, OrderedDict())
        if cont in entry:
            entry.move_to_end(cont)
        else:
            entry[cont] = None
            while len(entry) > self.capacity:
                entry.popitem(last=False)

    def add_sequence(self, tokens: Sequence[int], start: int = 0) -> None:
        """Insert every n-gram of `tokens` that starts at index >= start (seeding from a prompt,
        adding the n-grams that new output tokens complete)."""
        for i in range(max(0, start), len(tokens) - self.n + 1):
            self.add(tokens[i], tokens[i + 1:i + self.n])

    def candidates(self, key: int, limit: int) -> list[tuple[int, ...]]:
        """At most `limit` continuations of `key`, newest first."""
        entry = self._map.get(key)
        if not entry or limit <= 0:
            return []
        out: list[tuple[int, ...]] = []
        for cont in reversed(entry):
            out.append(cont)
            if len(out) == limit:
                break
        return out

    def __len__(self) -> int:
        return sum(len(e) for e in self._map.values())

    def keys(self) -> Iterable[int]:
        return self._map.keys()
