"""The records that flow from a reader to the encoder.

A reader yields :class:`RawRecord` objects: bytes as found at the source, a stable content id and,
when the source itself is already known to be bad (a missing file, a path that escapes the source
folder, a broken manifest line), a :class:`Problem`.  :func:`solar.data.decode.decode_record`
turns a raw record into a :class:`solar.data.Document` or a :class:`Quarantined` one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

# Quarantine kinds (the ``kind`` of a Problem).  Each comes with a human reason naming the item.
MISSING_FILE = "missing_file"
PATH_ESCAPE = "path_escape"
ZERO_BYTES = "zero_bytes"
CORRUPT_IMAGE = "corrupt_image"
TOO_MANY_PIXELS = "too_many_pixels"
TOO_LARGE_FILE = "too_large_file"
BAD_TEXT = "bad_text"
EMPTY_DOCUMENT = "empty_document"
BAD_ENTRY = "bad_entry"
BAD_META = "bad_meta"                  # metadata too deep, an integer beyond 64 bits, not an object
FIELD_TOO_LARGE = "field_too_large"    # a manifest field or the metadata over its size limit
SYMLINK_MEMBER = "symlink_member"      # a tar member that is a link (never followed)
KINDS = (MISSING_FILE, PATH_ESCAPE, ZERO_BYTES, CORRUPT_IMAGE, TOO_MANY_PIXELS, TOO_LARGE_FILE,
         BAD_TEXT, EMPTY_DOCUMENT, BAD_ENTRY, BAD_META, FIELD_TOO_LARGE, SYMLINK_MEMBER)

_ID_SALT = b"solar-doc-v1\0"


def content_id(image: Optional[bytes], text: Optional[bytes]) -> str:
    """Stable id of a document: 32 hex chars of BLAKE2b over the image bytes and the text bytes.

    image: the image file's bytes as stored (None when the document has no image).
    text: the text as UTF-8 bytes, surrounding ASCII whitespace ignored (None when no text).
    The same (image, text) content gives the same id wherever it is found, so re-ingesting a
    source is idempotent.
    """
    h = hashlib.blake2b(_ID_SALT, digest_size=16)
    if image is not None:
        h.update(b"I" + len(image).to_bytes(8, "little"))
        h.update(image)
    if text is not None:
        t = text.strip()
        h.update(b"T" + len(t).to_bytes(8, "little"))
        h.update(t)
    return h.hexdigest()


def text_bytes(text: Any) -> Optional[bytes]:
    """Text as bytes for a RawRecord: str is encoded (lone surrogates survive, and fail decoding
    later as unreadable text), bytes pass through, None stays None."""
    if text is None or isinstance(text, bytes):
        return text
    if isinstance(text, bytearray):
        return bytes(text)
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    raise TypeError(f"text must be str, bytes or None, got {type(text).__name__}")


class FileProblem(Exception):
    """An item that cannot be used (``kind`` is a quarantine kind, the message names the item)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Problem:
    """Why a record cannot be ingested: ``kind`` is one of KINDS, ``reason`` names the item."""
    kind: str
    reason: str


@dataclass
class RawRecord:
    """One document as read from a source, before decoding.

    id: content_id(image, text) (for a broken entry, a hash of its locator).
    locator: where it was found, human-readable (``folder/a.png``, ``shard.tar#key``,
    ``file.parquet#row=12``, ``manifest.jsonl:7``).
    image: the image file's bytes or None; text: UTF-8 bytes or None (decoded later).
    image_uri: how to load the image again (a path, ``shard.tar#member``, ...), "" if none.
    source: a short name of the source; meta: JSON-able metadata; problem: set when already bad.
    """
    id: str
    locator: str
    image: Optional[bytes] = None
    text: Optional[bytes] = None
    image_uri: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)
    problem: Optional[Problem] = None


@dataclass
class Quarantined:
    """A record that was set aside, with the reason (naming the item) and its kind."""
    id: str
    locator: str
    kind: str
    reason: str
    source: str = ""

    def to_json(self) -> dict:
        return {"id": self.id, "locator": self.locator, "source": self.source,
                "kind": self.kind, "reason": self.reason}


def broken(locator: str, kind: str, reason: str, source: str = "", **kw) -> RawRecord:
    """A RawRecord that is already known to be bad; its id hashes the locator."""
    rid = hashlib.blake2b(b"broken\0" + locator.encode("utf-8", "replace"), digest_size=16)
    return RawRecord(rid.hexdigest(), locator, source=source, problem=Problem(kind, reason), **kw)


def make_record(locator: str, image: Optional[bytes], text: Any, *, image_uri: str = "",
                source: str = "", meta: Optional[dict] = None) -> RawRecord:
    """A RawRecord with its content id computed from the image bytes and the text.

    Every reader builds its records here, so the metadata of every source passes the same
    bounded check (:func:`solar.data.meta.check_meta`): a record whose metadata could not be
    stored comes back already quarantined (``bad_meta`` or ``field_too_large``)."""
    from .meta import check_meta
    try:
        check_meta(meta or {}, f"{locator}: metadata")
    except FileProblem as err:
        return broken(locator, err.kind, str(err), source)
    tb = text_bytes(text)
    return RawRecord(content_id(image, tb), locator, image, tb, image_uri, source, dict(meta or {}))
