"""Offline ``wbsearchentities``: find items by label or alias as a user types them.

Wikidata's entity search matches the start of labels and aliases, case-insensitively, and
ranks exact matches first. Without Wikidata's popularity signals the ranking here is: exact
name, then a name that starts with the query, then names holding every query token (the last
one may be a prefix of a name token), then names holding some of them; a label beats an
alias, a shorter name (the query covers more of it) beats a longer one, and a lower QID (an
older, usually better-known item) breaks ties.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tools.wiki.index import tokenize

EXACT, PREFIX, ALL_TOKENS, SOME_TOKENS = 3.0, 2.0, 1.0, 0.0
_PREFIX_EXPANSION = 64


@dataclass(frozen=True)
class Name:
    """One searchable name of an item: ``item`` is the item's position in the replica."""

    item: int
    text: str
    is_label: bool


class NameIndex:
    """Token lookups over item labels and aliases (the query's last token may be a prefix),
    then tiers by how the whole name matches."""

    def __init__(self, names: Sequence[Name], order: Sequence[int]) -> None:
        """``order[item]`` is the item's tie-break rank (lower first)."""
        self.names = list(names)
        self.order = list(order)
        self._folded = [" ".join(tokenize(n.text)) for n in self.names]
        self._tokens: dict[str, list[int]] = defaultdict(list)
        self._lengths: list[int] = []
        for i, text in enumerate(self._folded):
            tokens = text.split()
            self._lengths.append(len(tokens))
            for token in set(tokens):
                self._tokens[token].append(i)
        self._vocabulary = sorted(self._tokens)

    def search(self, query: str, limit: int) -> list[int]:
        """Items (by position), best first, at most one entry per item."""
        tokens = tokenize(query)
        if not tokens or limit < 1:
            return []
        folded = " ".join(tokens)
        matched: dict[int, set[int]] = defaultdict(set)
        for position, token in enumerate(tokens):
            for name in self._token_names(token, prefix=position == len(tokens) - 1):
                matched[name].add(position)
        best: dict[int, tuple[float, float, int]] = {}
        for name, positions in matched.items():
            text = self._folded[name]
            if text == folded:
                tier = EXACT
            elif text.startswith(folded):
                tier = PREFIX
            elif len(positions) == len(tokens):
                tier = ALL_TOKENS
            else:
                tier = SOME_TOKENS
            score = (
                tier
                + 0.5 * len(positions) / len(tokens)
                + 0.4 * len(positions) / max(self._lengths[name], 1)
                + 0.05 * self.names[name].is_label
            )
            item = self.names[name].item
            key = (-score, self.order[item], item)
            if item not in best or key < best[item]:
                best[item] = key
        return [item for *_, item in sorted(best.values())[:limit]]

    def _token_names(self, token: str, prefix: bool) -> set[int]:
        names = set(self._tokens.get(token, ()))
        if prefix:
            start = bisect.bisect_left(self._vocabulary, token)
            for other in self._vocabulary[start : start + _PREFIX_EXPANSION]:
                if not other.startswith(token):
                    break
                names.update(self._tokens[other])
        return names
