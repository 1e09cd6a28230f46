"""The one document type: what every reader yields once decoded, what training, evaluation and
the Milvus plugin take.

A :class:`Document` is an (image, text) document, either part optional.  Its ``image`` is an RGB
PIL image, or a zero-argument callable that returns one when asked (the offline sets and the
training data load pixels lazily, so a list of a million documents holds no pixels), or None.
Where it came from rides along: ``id`` (the content id of :func:`solar.data.content_id`, or the
offline set's stable id), ``locator`` (human-readable: ``folder/a.png``, ``shard.tar#key``),
``image_uri`` (how to load the image again), ``source`` and ``meta``.

Readers first yield :class:`solar.data.RawRecord`, the bytes as found (not yet a document: it
may be corrupt); :func:`solar.data.decode_record` turns one into a Document or a
:class:`solar.data.Quarantined` record with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Document:
    """One document.  text: str or None; image: RGB PIL image, a zero-argument callable returning
    one, or None; id, locator, image_uri, source: strings ("" when unknown); meta: JSON-able."""
    text: Optional[str] = None
    image: Any = None
    id: str = ""
    locator: str = ""
    image_uri: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """"image+text", "image" or "text" (what the document holds)."""
        if self.image is not None:
            return "image+text" if self.text else "image"
        return "text"

    @property
    def name(self) -> str:
        """How errors name this document: its locator, else its id, else "document"."""
        return self.locator or self.id or "document"

    def load_image(self, size: Optional[int] = None):
        """The image as a PIL image (a lazy image is loaded now, not kept), resized to
        ``size`` x ``size`` when given; None for a text-only document."""
        img = self.image() if callable(self.image) else self.image
        if img is not None and size is not None:
            img = img.resize((size, size))
        return img
