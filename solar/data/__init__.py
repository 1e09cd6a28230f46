"""Data: readers for image+text documents, decoding with quarantine reasons, offline sets.

Readers (iterables of :class:`RawRecord` with a stable content id): :class:`FolderSource`,
:class:`ManifestSource` (JSONL/CSV), :class:`WebDatasetSource` (tar shards), :class:`ParquetSource`,
and the offline sets :class:`ClipartSource` and :class:`EmojiSource`; :func:`open_source` picks one
from a spec string.  :func:`decode_record` turns a raw record into a :class:`DecodedRecord` or a
:class:`Quarantined` one.  The offline pairs themselves live in :mod:`solar.data.offline`.
Nothing here imports Pillow or pyarrow until it is used.
"""
from .decode import DecodeConfig, ImageError, decode_many, decode_record, open_image, to_rgb
from .readers import FolderSource, ManifestSource
from .records import (KINDS, DecodedRecord, Problem, Quarantined, RawRecord, content_id,
                      make_record)
from .shards import ParquetSource, WebDatasetSource
from .sources import ClipartSource, EmojiSource, load_image_uri, open_source

__all__ = [
    "DecodeConfig", "ImageError", "decode_record", "decode_many", "open_image", "to_rgb",
    "FolderSource", "ManifestSource", "WebDatasetSource", "ParquetSource", "ClipartSource",
    "EmojiSource", "open_source", "load_image_uri", "RawRecord", "DecodedRecord", "Quarantined",
    "Problem", "KINDS", "content_id", "make_record",
]
