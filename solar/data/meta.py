"""Bounded, recursion-safe checks of record metadata, shared by every reader.

A record's metadata ends up in the collection's JSON field, so one record must not be able to
stop a job with it: JSON nested so deep that the parser recurses out of stack, an integer that no
64-bit store can hold, or a value far larger than a metadata field.  :func:`loads_json` parses
JSON text only after an iterative depth scan, and :func:`check_meta` walks a parsed value with an
explicit stack.  Both raise :class:`~solar.data.records.FileProblem` with a quarantine kind
(``bad_meta``, ``field_too_large`` or ``bad_entry``) and a reason that names the item.
"""
from __future__ import annotations

import json
import re
from typing import Union

from .records import BAD_ENTRY, BAD_META, FIELD_TOO_LARGE, FileProblem

MAX_DEPTH = 32                 # nesting levels of metadata (objects and arrays)
MAX_META_BYTES = 64 << 10      # metadata size, roughly as JSON text
MAX_FIELD_BYTES = 128 << 10    # one manifest field (csv's own default field limit: 131072)
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1

_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)


def json_depth(data: bytes) -> int:
    """The deepest nesting of objects/arrays in JSON text (strings skipped), without recursion."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return data.count(b"[") + data.count(b"{")
    depth = deepest = 0
    for m in _TOKENS.finditer(data):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


def loads_json(data: Union[str, bytes], name: str, max_depth: int = MAX_DEPTH):
    """Parse JSON text; FileProblem naming ``name`` for invalid UTF-8 or JSON (``bad_entry``) and
    for nesting deeper than ``max_depth`` (``bad_meta``), checked before the parser runs."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    depth = json_depth(raw)
    if depth > max_depth:
        raise FileProblem(BAD_META, f"{name}: JSON nested {depth} levels deep, over the limit "
                                    f"of {max_depth}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise FileProblem(BAD_ENTRY, f"{name}: not valid JSON (invalid UTF-8 at byte "
                                     f"{err.start})") from None
    except (ValueError, RecursionError) as err:
        raise FileProblem(BAD_ENTRY, f"{name}: not valid JSON ({_short(err)})") from None


def check_meta(meta, name: str, max_depth: int = MAX_DEPTH,
               max_bytes: int = MAX_META_BYTES) -> None:
    """Raise FileProblem naming ``name`` when ``meta`` (a dict, as a reader made it) cannot be
    stored: not an object, nested deeper than ``max_depth``, an integer outside the signed 64-bit
    range, a key that is not text (``bad_meta``), or larger than about ``max_bytes``
    (``field_too_large``).  Iterative: any depth of input is safe."""
    if not isinstance(meta, dict):
        raise FileProblem(BAD_META, f"{name} must be a JSON object, got {type(meta).__name__}")
    size = 0
    stack = [(meta, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            items = v.items()
        elif isinstance(v, (list, tuple)):
            items = ((None, x) for x in v)
        else:
            size += _leaf_size(v, name)
            if size > max_bytes:
                raise FileProblem(FIELD_TOO_LARGE, f"{name} is over the limit of {max_bytes} "
                                                   f"bytes")
            continue
        if depth > max_depth:
            raise FileProblem(BAD_META, f"{name} is nested deeper than {max_depth} levels")
        for k, x in items:
            if k is not None and not isinstance(k, str):
                raise FileProblem(BAD_META, f"{name}: key {k!r} is not text")
            size += 2 + (len(k) if k is not None else 0)
            stack.append((x, depth + 1))


def _leaf_size(v, name: str) -> int:
    if isinstance(v, bool) or v is None:
        return 5
    if isinstance(v, int):
        if not INT_MIN <= v <= INT_MAX:
            raise FileProblem(BAD_META, f"{name}: an integer of {v.bit_length()} bits does not "
                                        f"fit in 64 bits")
        return 20
    if isinstance(v, float):
        return 24
    if isinstance(v, (str, bytes, bytearray)):
        return len(v) + 2
    return len(str(v)) + 2


def check_field(value, name: str, max_bytes: int = MAX_FIELD_BYTES) -> None:
    """FileProblem(``field_too_large``) naming ``name`` when a text field is over ``max_bytes``."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > max_bytes:
        raise FileProblem(FIELD_TOO_LARGE, f"{name} is {len(value)} bytes, over the field limit "
                                           f"of {max_bytes}")


def _short(x, limit: int = 60) -> str:
    s = str(x)
    return s if len(s) <= limit else s[:limit] + "..."
