"""Repeated names in an event's JSON objects: the one check of the event contract (contract.py) that orjson
cannot make, since it keeps a repeated name's last value without saying so."""

from __future__ import annotations

import json

MAX_NESTING = 100  # levels of objects and arrays an event may nest where repeated names must be checked


def repeated_key(raw: bytes, ev: dict) -> str | None:
    """Why the event is refused when a name occurs twice in one of its objects, else None. orjson keeps a
    repeated name's last value and other parsers its first, so an event naming "tenant_id" twice could be routed
    to one tenant here and read as another's upstream: such an event is refused, never guessed at. (Cheap first:
    every name is followed by a colon, so when the colons are no more than the parsed objects' names, none
    repeats; parse_event tests that before calling. Otherwise the pairs are read again with the standard
    library, whose reader recurses: an event nested deeper than MAX_NESTING is refused rather than let through
    at a depth that would depend on the caller's stack.)"""
    stack, depth = [(ev, 1)], 0
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        if depth > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels, too deep to check for repeated names"
        stack += [(v, d + 1) for v in (node.values() if type(node) is dict else node) if type(v) in (dict, list)]
    try:
        top = json.loads(raw, object_pairs_hook=_Pairs)  # orjson read it: so does the standard library
    except ValueError:
        return None
    stack = [top]
    while stack:
        node = stack.pop()
        if type(node) is _Pairs:
            names = [k for k, _ in node]
            if len(set(names)) != len(names):
                twice = next(k for i, k in enumerate(names) if k in names[:i])
                return (f"field {twice!r} appears more than once in one object (which one counts differs between "
                        "JSON parsers)")
            stack += [v for _, v in node]
        elif type(node) is list:
            stack += node
    return None


class _Pairs(list):
    """An object's (name, value) pairs as sent, repeats kept (repeated_key)."""
