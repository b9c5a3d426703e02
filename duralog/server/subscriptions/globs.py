"""Glob patterns over stream paths (PROTOCOL.md 6.2) and an index of them.

``*`` matches exactly one path segment and ``**`` zero or more; any other
segment matches itself (``%2A`` stands for a literal ``*``, as in the reference
server). Matching never backtracks exponentially: the pattern is cut at its
``**`` segments into fixed-length groups, the first and last anchored, the
middle ones found leftmost-first, so one match costs at most
(path segments x pattern segments) comparisons, and both are bounded.

``GlobIndex`` keeps patterns in a trie keyed by their literal leading segments,
so a path only meets the patterns whose literal prefix it shares: an append
costs work proportional to the patterns that could match its stream, not to
all of them. Patterns starting with a wildcard sit at the root and are checked
for every path (nothing narrower is known about them).
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_PATTERN_CHARS = 1024
MAX_PATTERN_SEGMENTS = 64


def split_path(path: str) -> list[str]:
    return [s for s in path.strip("/").split("/") if s]


def _literal(seg: str) -> str:
    return seg.replace("%2A", "*").replace("%2a", "*")


def _group_at(group: list[str], path: list[str], at: int) -> bool:
    return all(seg == "*" or _literal(seg) == path[at + k] for k, seg in enumerate(group))


def glob_match(pattern: list[str], path: list[str]) -> bool:
    """Whether ``path`` (segments) matches ``pattern`` (segments)."""
    if "**" not in pattern:
        return len(pattern) == len(path) and _group_at(pattern, path, 0)
    groups: list[list[str]] = [[]]
    for seg in pattern:
        if seg == "**":
            groups.append([])
        else:
            groups[-1].append(seg)
    first, last, middle = groups[0], groups[-1], groups[1:-1]
    n = len(path)
    if len(first) + len(last) > n:
        return False
    if not _group_at(first, path, 0) or not _group_at(last, path, n - len(last)):
        return False
    i, end = len(first), n - len(last)
    for group in middle:
        if not group:
            continue
        j = i
        while j + len(group) <= end and not _group_at(group, path, j):
            j += 1
        if j + len(group) > end:
            return False
        i = j + len(group)
    return True


def literal_prefix(pattern: list[str]) -> list[str]:
    out = []
    for seg in pattern:
        if seg in ("*", "**"):
            break
        out.append(_literal(seg))
    return out


class _Node:
    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.entries: dict[str, list[str]] = {}  # key -> pattern segments


class GlobIndex:
    """Patterns by key (a subscription id), found by the paths they may match."""

    def __init__(self) -> None:
        self._root = _Node()
        self._where: dict[str, list[str]] = {}
        #: pattern checks made by ``matches`` (tests count work with it)
        self.checks = 0

    def __len__(self) -> int:
        return len(self._where)

    def add(self, key: str, pattern: str) -> None:
        self.remove(key)
        segs = split_path(pattern)
        prefix = literal_prefix(segs)
        node = self._root
        for seg in prefix:
            node = node.children.setdefault(seg, _Node())
        node.entries[key] = segs
        self._where[key] = prefix

    def remove(self, key: str) -> None:
        prefix = self._where.pop(key, None)
        if prefix is None:
            return
        trail = [self._root]
        for seg in prefix:
            trail.append(trail[-1].children[seg])
        trail[-1].entries.pop(key, None)
        for depth in range(len(prefix), 0, -1):  # prune empty branches
            node = trail[depth]
            if node.entries or node.children:
                break
            del trail[depth - 1].children[prefix[depth - 1]]

    def matches(self, path: str) -> Iterator[str]:
        """Keys whose pattern matches ``path``."""
        segs = split_path(path)
        node: _Node | None = self._root
        depth = 0
        while node is not None:
            for key, pattern in node.entries.items():
                self.checks += 1
                if glob_match(pattern, segs):
                    yield key
            if depth >= len(segs):
                break
            node = node.children.get(segs[depth])
            depth += 1


class PathTrie:
    """Stream paths by segment, so a pattern's backfill (6.2) visits only the streams
    under its literal prefix instead of every stream the store holds."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: dict[str, dict] = {}

    def add(self, path: str) -> None:
        node = self._root
        for seg in split_path(path):
            node = node.setdefault(seg, {})
        node[""] = {}  # "" marks the end of a path (no segment is empty)

    def remove(self, path: str) -> None:
        segs = split_path(path)
        trail = [self._root]
        for seg in segs:
            nxt = trail[-1].get(seg)
            if nxt is None:
                return
            trail.append(nxt)
        trail[-1].pop("", None)
        for depth in range(len(segs), 0, -1):
            if trail[depth]:
                break
            del trail[depth - 1][segs[depth - 1]]

    def under(self, prefix: list[str]) -> Iterator[str]:
        node = self._root
        for seg in prefix:
            nxt = node.get(seg)
            if nxt is None:
                return
            node = nxt
        stack: list[tuple[dict, list[str]]] = [(node, list(prefix))]
        while stack:
            node, segs = stack.pop()
            for seg, child in node.items():
                if seg == "":
                    yield "/".join(segs)
                else:
                    stack.append((child, [*segs, seg]))
