"""Source specs: one string names any supported source, and image URIs load an image back.

=====================  ==================================================================
spec                   source
=====================  ==================================================================
``clipart[:N]``        the offline Open Clip Art set (first N pairs in its stable order)
``emoji[:N]``          the offline Noto emoji set, rendered
``DIR``                a folder of files paired by stem (``a.png`` + ``a.txt``); a folder
                       holding only ``.tar`` or only ``.parquet`` files reads as shards
``X.jsonl|X.csv``      a manifest of (image path, text, optional id / meta)
``X.tar|X.tar.gz``     WebDataset shards (also a glob such as ``shards/*.tar``)
``X.parquet``          Parquet with image bytes (also a glob)
=====================  ==================================================================
"""
from __future__ import annotations

import glob as globlib
import io
import itertools
from pathlib import Path
from typing import Iterator, Optional

from .decode import DecodeConfig, open_image
from .readers import DEFAULT_MAX_BYTES, FileProblem, FolderSource, ManifestSource, read_file
from .records import RawRecord, broken, make_record
from .shards import ParquetSource, WebDatasetSource

OFFLINE = ("clipart", "emoji")
DEFAULT_CLIPART_LIMIT = 1000


class ClipartSource:
    """The offline Open Clip Art pairs (solar.data.offline.clipart_pairs) as raw records."""

    name = "openclipart"

    def __init__(self, limit: Optional[int] = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.limit = limit
        self.max_bytes = max_bytes

    def __iter__(self) -> Iterator[RawRecord]:
        from .offline import clipart_pairs
        for p in clipart_pairs(self.limit):
            try:
                data = read_file(Path(p.image_uri), p.image_uri, self.max_bytes)
            except FileProblem as err:
                yield broken(p.image_uri, err.kind, str(err), self.name)
                continue
            yield make_record(p.image_uri, data, p.text, image_uri=p.image_uri, source=self.name,
                              meta={**p.meta, "pair_id": p.id})


class EmojiSource:
    """The offline Noto emoji pairs, each rendered to PNG bytes (image URI ``emoji:<emoji>``)."""

    name = "noto-emoji"

    def __init__(self, limit: Optional[int] = None):
        self.limit = limit

    def __iter__(self) -> Iterator[RawRecord]:
        from .offline import emoji_pairs
        for p in emoji_pairs(self.limit):
            buf = io.BytesIO()
            p.load_image().save(buf, format="PNG")
            yield make_record(p.image_uri, buf.getvalue(), p.text, image_uri=p.image_uri,
                              source=self.name, meta={**p.meta, "pair_id": p.id})


class LimitedSource:
    """The first ``limit`` records of another source."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.name = inner, limit, inner.name

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.limit)


def _offline(spec: str):
    head, _, tail = spec.partition(":")
    limit = None
    if tail:
        if not tail.isdigit() or int(tail) < 1:
            raise ValueError(f"source {spec!r}: the limit after ':' must be a positive integer")
        limit = int(tail)
    return ClipartSource(limit) if head == "clipart" else EmojiSource(limit)


def open_source(spec: str, limit: Optional[int] = None, max_bytes: int = DEFAULT_MAX_BYTES):
    """A source object (iterable of RawRecord, with a ``name``) for a spec string (table above).

    Raises ValueError naming the spec when it matches nothing.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"source spec must be a non-empty string, got {spec!r}")
    if spec.partition(":")[0] in OFFLINE and not Path(spec).exists():
        src = _offline(spec)
    else:
        src = _path_source(spec, max_bytes)
    return LimitedSource(src, limit) if limit is not None else src


def _path_source(spec: str, max_bytes: int):
    p = Path(spec)
    low = spec.lower()
    if p.is_dir():
        files = [f.name.lower() for f in p.iterdir() if f.is_file()]
        if files and all(f.endswith((".tar", ".tar.gz", ".tgz")) for f in files):
            return WebDatasetSource(p, max_bytes=max_bytes)
        if files and all(f.endswith((".parquet", ".pq")) for f in files):
            return ParquetSource(p, max_bytes=max_bytes)
        return FolderSource(p, max_bytes=max_bytes)
    if any(c in spec for c in "*?[") and not p.exists():
        matches = sorted(globlib.glob(spec))
        if not matches:
            raise ValueError(f"source {spec!r}: the pattern matches no file")
        low = matches[0].lower()
    elif not p.exists():
        raise ValueError(f"source {spec!r}: no such file or folder, and not one of "
                         f"{', '.join(OFFLINE)}")
    if low.endswith((".jsonl", ".csv", ".tsv")):
        return ManifestSource(spec, max_bytes=max_bytes)
    if low.endswith((".tar", ".tar.gz", ".tgz")):
        return WebDatasetSource(spec, max_bytes=max_bytes)
    if low.endswith((".parquet", ".pq")):
        return ParquetSource(spec, max_bytes=max_bytes)
    raise ValueError(f"source {spec!r}: unknown kind (expected a folder, .jsonl/.csv manifest, "
                     f".tar shards, .parquet or one of {', '.join(OFFLINE)})")


def load_image_uri(uri: str, cfg: DecodeConfig = DecodeConfig()):
    """Load the image behind an ``image_uri`` that a reader stored: a file path,
    ``tar:<shard>#<member>``, ``parquet:<file>#<row>`` or ``emoji:<emoji>``.  Returns an RGB PIL
    image; raises ValueError naming the URI when it cannot be loaded."""
    if not uri:
        raise ValueError("empty image URI")
    if uri.startswith("emoji:"):
        from .offline import render_emoji
        return render_emoji(uri[len("emoji:"):])
    try:
        data = _uri_bytes(uri)
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise ValueError(f"image URI {uri!r} cannot be read ({err})") from None
    return open_image(data, uri, cfg)


def _uri_bytes(uri: str) -> bytes:
    if uri.startswith("tar:"):
        import tarfile
        shard, _, member = uri[len("tar:"):].rpartition("#")
        with tarfile.open(shard, "r:*") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    if uri.startswith("parquet:"):
        path, _, row = uri[len("parquet:"):].rpartition("#")
        for rec in ParquetSource(path):
            if rec.locator == f"{path}#row={int(row)}":
                if rec.image is None:
                    raise ValueError("row has no image bytes")
                return rec.image
        raise IndexError(f"row {row} not in {path}")
    try:
        return read_file(Path(uri), uri)          # a regular file only, at most 64 MiB
    except FileProblem as err:
        raise ValueError(str(err)) from None
