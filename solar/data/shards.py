"""Readers for packed data: WebDataset tar shards and Parquet files with image bytes.

WebDataset: members that share a key (the path up to the first dot of the file name) form one
sample, e.g. ``0001.jpg`` + ``0001.txt`` + ``0001.json``.  Parquet: one row per document with an
image column (binary, a ``{bytes, path}`` struct as Hugging Face datasets write it, or a path
string), a text column and optional id/meta columns.
"""
from __future__ import annotations

import glob as globlib
import os
import tarfile
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .meta import loads_json
from .readers import (DEFAULT_MAX_BYTES, IMAGE_EXTS, TEXT_EXTS, FileProblem, parse_meta,
                      resolve_inside)
from .records import (BAD_ENTRY, SYMLINK_MEMBER, TOO_LARGE_FILE, RawRecord, broken,
                      make_record)

PathLike = Union[str, Path]


def expand_paths(spec: Union[PathLike, Sequence[PathLike]], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named by ``spec``: a file, a folder (its files with these suffixes, sorted), a glob,
    or a list of those.  Raises ValueError naming the spec when nothing matches."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(suffixes))
        elif p.is_file():
            out.append(p)
        elif any(c in str(s) for c in "*?["):
            out += sorted(Path(f) for f in globlib.glob(str(s)) if os.path.isfile(f))
        else:
            raise ValueError(f"{str(s)!r}: no such file or folder")
    if not out:
        raise ValueError(f"{spec!r}: no {'/'.join(suffixes)} files found")
    return out


def _split_key(name: str) -> tuple[str, str]:
    d, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext.lower()


class WebDatasetSource:
    """WebDataset tar shards (``.tar``, ``.tar.gz``, ``.tgz``): a file, a folder, a glob or a
    list.  A truncated or corrupt shard yields one quarantined entry and the reader moves on."""

    def __init__(self, shards, name: Optional[str] = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.shards = expand_paths(shards, (".tar", ".tar.gz", ".tgz"))
        self.max_bytes = max_bytes
        self.name = name or self.shards[0].parent.name or "webdataset"

    def __iter__(self) -> Iterator[RawRecord]:
        for shard in self.shards:
            yield from self._shard(shard)

    def _shard(self, shard: Path) -> Iterator[RawRecord]:
        key, parts, n, end = None, {}, 0, 0
        try:
            with tarfile.open(shard, "r|*") as tar:
                for m in tar:
                    if m.isdir():
                        continue
                    k, ext = _split_key(m.name)
                    if k != key and key is not None:
                        yield self._sample(shard, key, parts)
                        n += 1
                        parts = {}
                    key = k
                    if not m.isfile():      # links are never followed, devices never read
                        parts[ext] = _special_member(shard, m)
                        continue
                    if m.size > self.max_bytes:
                        parts[ext] = FileProblem(TOO_LARGE_FILE, f"{shard}#{m.name}: member is "
                                                 f"{m.size} bytes, over the limit of {self.max_bytes}")
                        continue
                    f = tar.extractfile(m)
                    parts[ext] = (m.name, f.read() if f is not None else b"")
                end = tar.offset
            if _cut_short(shard, end):
                raise tarfile.ReadError("the file ends inside a header or without the "
                                        "end-of-archive blocks")
            if key is not None:
                yield self._sample(shard, key, parts)
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            loc = f"{shard}#{key}" if key is not None else str(shard)
            yield broken(loc, BAD_ENTRY,
                         f"{shard}: shard is truncated or corrupt after {n} samples ({err}); "
                         f"sample {key!r} and any later ones are lost", self.name)

    def _sample(self, shard: Path, key: str, parts: dict) -> RawRecord:
        loc = f"{shard}#{key}"
        for v in parts.values():
            if isinstance(v, FileProblem):
                return broken(loc, v.kind, str(v), self.name)
        img = next(((n, b) for e, (n, b) in parts.items() if "." + e.rsplit(".", 1)[-1] in
                    IMAGE_EXTS), None)
        txt = next((b for e, (n, b) in parts.items() if "." + e.rsplit(".", 1)[-1] in TEXT_EXTS
                    or e == "text"), None)
        meta = {}
        if "json" in parts:
            try:
                meta = loads_json(parts["json"][1], f"{loc}.json: metadata")
            except FileProblem as err:
                return broken(loc, err.kind, str(err), self.name)
            if not isinstance(meta, dict):
                return broken(loc, BAD_ENTRY, f"{loc}.json: metadata must be a JSON object",
                              self.name)
            if txt is None and isinstance(meta.get("caption", meta.get("text")), str):
                txt = meta.get("caption", meta.get("text"))
        meta = {**meta, "key": key}
        uri = f"tar:{shard}#{img[0]}" if img else ""
        return make_record(loc, img[1] if img else None, txt, image_uri=uri, source=self.name,
                           meta=meta)


def _special_member(shard: Path, m) -> FileProblem:
    if m.issym() or m.islnk():
        return FileProblem(SYMLINK_MEMBER, f"{shard}#{m.name}: member is a "
                           f"{'symbolic' if m.issym() else 'hard'} link (to {m.linkname!r}); "
                           f"links in shards are not followed")
    return FileProblem(BAD_ENTRY, f"{shard}#{m.name}: member is not a regular file")


def _cut_short(shard: Path, end: int) -> bool:
    """True when an uncompressed tar stops early: tarfile takes a short or missing last header
    for the end of the archive, so check the size (whole 512-byte blocks, and room for the two
    zero blocks that end every archive after the last member, ``end``)."""
    if not shard.name.lower().endswith(".tar"):
        return False
    size = shard.stat().st_size
    return size % 512 != 0 or size < end + 1024


class ParquetSource:
    """Parquet files (a file, folder, glob or list) with one document per row.

    image_column: binary image bytes, a struct with a ``bytes`` (and ``path``) field, or a string
    path relative to the file's folder; text_column: string or binary (UTF-8); id_column and
    meta_column are optional (meta: a JSON object string or a struct); other scalar columns go to
    meta.  An unreadable file yields one quarantined entry and the reader moves on.
    """

    def __init__(self, files, image_column: str = "image", text_column: str = "text",
                 id_column: str = "id", meta_column: str = "meta", name: Optional[str] = None,
                 batch_rows: int = 256, max_bytes: int = DEFAULT_MAX_BYTES):
        self.files = expand_paths(files, (".parquet", ".pq"))
        self.cols = (image_column, text_column, id_column, meta_column)
        self.batch_rows = batch_rows
        self.max_bytes = max_bytes
        self.name = name or self.files[0].stem

    def __iter__(self) -> Iterator[RawRecord]:
        for f in self.files:
            yield from self._file(f)

    def _file(self, path: Path) -> Iterator[RawRecord]:
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from err
        image_col, text_col = self.cols[:2]
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            if image_col not in names and text_col not in names:
                raise ValueError(f"{path}: has neither column {image_col!r} nor {text_col!r} "
                                 f"(columns: {names})")
            row = 0
            for batch in pf.iter_batches(batch_size=self.batch_rows):
                for r in batch.to_pylist():
                    yield self._record(path, row, r)
                    row += 1
        except (OSError, ValueError) as err:   # pyarrow's ArrowInvalid is a ValueError
            yield broken(f"{path}", BAD_ENTRY, f"{path}: unreadable Parquet file ({err})", self.name)

    def _record(self, path: Path, row: int, r: dict) -> RawRecord:
        image_col, text_col, id_col, meta_col = self.cols
        loc = f"{path}#row={row}"
        try:
            meta = parse_meta(r.get(meta_col), f"{loc}: column {meta_col!r}")
        except FileProblem as err:
            return broken(loc, err.kind, str(err), self.name)
        meta = {**{k: v for k, v in r.items() if k not in self.cols and _scalar(v)}, **meta}
        if r.get(id_col) is not None:
            meta["source_id"] = r[id_col]
        try:
            image, uri = self._image(path, row, r.get(image_col))
        except FileProblem as err:
            return broken(loc, err.kind, f"{loc}: {err}", self.name)
        text = r.get(text_col)
        if text is not None and not isinstance(text, (str, bytes)):
            return broken(loc, BAD_ENTRY, f"{loc}: column {text_col!r} must be a string", self.name)
        return make_record(loc, image, text, image_uri=uri, source=self.name, meta=meta)

    def _image(self, path: Path, row: int, v):
        if v is None:
            return None, ""
        uri = f"parquet:{path}#{row}"
        if isinstance(v, dict):
            if v.get("bytes") is not None:
                return bytes(v["bytes"]), uri
            v = v.get("path")
            if v is None:
                return None, ""
        if isinstance(v, (bytes, bytearray)):
            return bytes(v), uri
        if isinstance(v, str):
            from .readers import read_file
            p = resolve_inside(path.parent, v)
            return read_file(p, f"{path}#row={row} ({v})", self.max_bytes), str(p)
        raise FileProblem(BAD_ENTRY, f"image column holds {type(v).__name__}, expected bytes, "
                                     f"a {{bytes, path}} struct or a path")


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))
