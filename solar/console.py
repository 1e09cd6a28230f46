"""What the command line writes to a terminal: stored or user-given text made inert, and errors as
one line.

Text that comes from stored documents or from users (a caption, a file name, a library's error
message) may hold control characters: ``ESC ] 0 ; ... BEL`` retitles a terminal, ``ESC [ 2 J``
clears it, a C1 ``CSI`` does the same on some terminals, and bidirectional overrides reorder what
is shown.  :func:`terminal_safe` writes each of them as a visible escape (``\\x1b``, ``\\u202e``).
"""
from __future__ import annotations

import os
import re

VERBOSE_ENV = "SOLAR_VERBOSE"

# C0 controls, DEL, C1 controls, and the Unicode bidirectional embedding/override/isolate marks.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")   # json escapes C0


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_safe(text, keep_newlines: bool = False) -> str:
    """``text`` (any object, as str) with every control character written as a visible escape;
    with ``keep_newlines`` line breaks stay as they are (for multi-line output of our own)."""
    s = str(text)
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in s.split("\n"))
    return _UNSAFE.sub(_escape, s)


def json_safe(text: str) -> str:
    """JSON text whose strings hold no raw control characters: json.dumps already escapes C0
    controls; this escapes the rest (DEL, C1 and the bidirectional marks) the same way."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_verbose() -> bool:
    """Whether errors should show their traceback: ``solar-index --verbose`` or SOLAR_VERBOSE=1."""
    if verbose_from_env():
        return True
    import click
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("verbose"))


def one_line(err: BaseException) -> str:
    """An exception as one terminal-safe line: its message, or its type when it has none."""
    msg = " ".join(str(err).split()) or type(err).__name__
    if len(msg) > 1000:
        msg = msg[:1000] + "..."
    return terminal_safe(msg)
