"""Data: readers for image+text documents, decoding with quarantine reasons, offline sets.

Readers (iterables of :class:`RawRecord` with a stable content id): :class:`FolderSource`,
:class:`ManifestSource` (JSONL/CSV), :class:`WebDatasetSource` (tar shards), :class:`ParquetSource`,
and the offline sets :class:`ClipartSource` and :class:`EmojiSource`; :func:`open_source` picks one
from a spec string.  :func:`decode_record` turns a raw record into a :class:`Document` (the one
document type of the library) or a :class:`Quarantined` one.  The offline sets' documents come
from :mod:`solar.data.offline`.
Nothing here imports Pillow or pyarrow until it is used.
"""
from .decode import DecodeConfig, ImageError, decode_many, decode_record, open_image, to_rgb
from .document import Document
from .readers import FolderSource, ManifestSource
from .records import (KINDS, Problem, Quarantined, RawRecord, content_id,
                      make_record)
from .shards import ParquetSource, WebDatasetSource
from .sources import ClipartSource, EmojiSource, load_image_uri, open_source

__all__ = [
    "DecodeConfig", "ImageError", "decode_record", "decode_many", "open_image", "to_rgb",
    "FolderSource", "ManifestSource", "WebDatasetSource", "ParquetSource", "ClipartSource",
    "EmojiSource", "open_source", "load_image_uri", "RawRecord", "Document", "Quarantined",
    "Problem", "KINDS", "content_id", "make_record",
]
