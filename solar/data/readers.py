"""Readers for files on disk: a folder of (image, text) files and a JSONL or CSV manifest.

Each reader is an iterable of RawRecord in a stable order.  Entries that are bad at the source
(missing file, a path that escapes the source folder, a broken manifest line, a file over the size
limit) come out as RawRecords with a ``problem``; nothing here raises for one bad entry.
"""
from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from typing import Iterator, Optional, Union

from .meta import MAX_DEPTH, check_field, loads_json
from .records import (BAD_ENTRY, BAD_TEXT, FIELD_TOO_LARGE, MISSING_FILE, PATH_ESCAPE,
                      TOO_LARGE_FILE, FileProblem, RawRecord, broken, make_record)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TEXT_EXTS = (".txt", ".caption")
META_EXTS = (".json",)
DEFAULT_MAX_BYTES = 64 << 20          # a single file over 64 MiB is refused, not read


def resolve_inside(root: Path, rel: str) -> Path:
    """``rel`` (relative to root, or absolute) as a real path that must lie inside ``root``.

    Raises FileProblem(PATH_ESCAPE) when it leaves root (``..``, an absolute path elsewhere, a
    symlink pointing out) and FileProblem(MISSING_FILE) when it does not exist.
    """
    root_real = os.path.realpath(root)
    p = Path(rel)
    real = os.path.realpath(p if p.is_absolute() else Path(root) / p)
    if real != root_real and not real.startswith(root_real.rstrip(os.sep) + os.sep):
        raise FileProblem(PATH_ESCAPE, f"{rel}: path escapes the source folder {root}")
    if not os.path.isfile(real):
        raise FileProblem(MISSING_FILE, f"{rel}: file not found under {root}")
    return Path(real)


def read_file(path: Path, name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``path``; FileProblem naming ``name`` when missing, unreadable, not a regular
    file (a FIFO, a device, a socket: refused before anything is read, so nothing blocks) or
    over ``max_bytes`` (never more than ``max_bytes + 1`` bytes are read)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(BAD_ENTRY, f"{name}: not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):   # swapped since the check
                raise FileProblem(BAD_ENTRY, f"{name}: not a regular file")
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise FileProblem(TOO_LARGE_FILE, f"{name}: file is {max(st.st_size, len(data))} "
                                              f"bytes, over the limit of {max_bytes}")
        return data
    except FileNotFoundError:
        raise FileProblem(MISSING_FILE, f"{name}: file not found") from None
    except OSError as err:
        raise FileProblem(BAD_ENTRY, f"{name}: cannot read ({err.strerror or err})") from None


class FolderSource:
    """A folder of documents paired by file stem: ``a.png`` + ``a.txt`` (+ optional ``a.json``
    metadata object) is one image+text document; an image alone is image-only; a text file alone
    is text-only.  Recursive, sorted; symlinks that point outside the folder are refused."""

    def __init__(self, root: Union[str, Path], max_bytes: int = DEFAULT_MAX_BYTES,
                 name: Optional[str] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"source folder {str(root)!r} does not exist or is not a folder")
        self.max_bytes = max_bytes
        self.name = name or self.root.name or str(self.root)

    def _groups(self) -> list[tuple[str, dict]]:
        groups: dict[str, dict] = {}
        for d, dirs, files in os.walk(self.root):
            dirs.sort()
            for f in sorted(files):
                stem, ext = os.path.splitext(f)
                ext = ext.lower()
                kind = ("image" if ext in IMAGE_EXTS else "text" if ext in TEXT_EXTS
                        else "meta" if ext in META_EXTS else None)
                if kind is None:
                    continue
                rel = os.path.relpath(os.path.join(d, f), self.root)
                key = os.path.join(os.path.relpath(d, self.root), stem)
                groups.setdefault(key, {"image": [], "text": [], "meta": []})[kind].append(rel)
        return sorted(groups.items())

    def __iter__(self) -> Iterator[RawRecord]:
        for key, g in self._groups():
            if g["image"]:
                for rel in g["image"]:
                    yield self._record(rel, g["text"][:1], g["meta"][:1])
            elif g["text"]:
                yield self._record(None, g["text"][:1], g["meta"][:1])

    def _record(self, image_rel, text_rels, meta_rels) -> RawRecord:
        locator = str(self.root / (image_rel or text_rels[0]))
        try:
            image = uri = None
            if image_rel is not None:
                path = resolve_inside(self.root, image_rel)
                image, uri = read_file(path, locator, self.max_bytes), str(path)
            text = None
            if text_rels:
                tpath = resolve_inside(self.root, text_rels[0])
                text = read_file(tpath, str(self.root / text_rels[0]), self.max_bytes)
            meta = self._meta(meta_rels)
        except FileProblem as err:
            return broken(locator, err.kind, str(err), self.name)
        meta["path"] = image_rel or text_rels[0]
        return make_record(locator, image, text, image_uri=uri or "", source=self.name, meta=meta)

    def _meta(self, meta_rels) -> dict:
        if not meta_rels:
            return {}
        path = resolve_inside(self.root, meta_rels[0])
        name = str(self.root / meta_rels[0])
        meta = loads_json(read_file(path, name, self.max_bytes), f"{name}: metadata")
        if not isinstance(meta, dict):
            raise FileProblem(BAD_ENTRY, f"{name}: metadata must be a JSON object")
        return meta


_IMAGE_KEYS = ("image", "image_path", "path", "file")
_TEXT_KEYS = ("text", "caption")


class ManifestSource:
    """A JSONL or CSV manifest: one document per line/row with an image path (key ``image``,
    ``image_path``, ``path`` or ``file``; relative to ``root``, default the manifest's folder),
    a ``text`` (or ``caption``), an optional ``id`` (kept as meta ``source_id``; the primary key
    stays the content id) and ``meta`` (a JSON object); other columns go to meta."""

    def __init__(self, path: Union[str, Path], root: Optional[Union[str, Path]] = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, name: Optional[str] = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"manifest {str(path)!r} does not exist")
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".csv", ".tsv"):
            raise ValueError(f"manifest {str(path)!r}: expected a .jsonl, .csv or .tsv file")
        self.format = "jsonl" if suffix == ".jsonl" else "csv"
        self.root = Path(root) if root is not None else self.path.parent
        self.max_bytes = max_bytes
        self.name = name or self.path.stem

    def __iter__(self) -> Iterator[RawRecord]:
        rows = self._jsonl_rows() if self.format == "jsonl" else self._csv_rows()
        for lineno, row in rows:
            loc = f"{self.path}:{lineno}"
            yield row if isinstance(row, RawRecord) else self._record(loc, row)

    def _jsonl_rows(self):
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                loc = f"{self.path}:{lineno}"
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield lineno, broken(loc, BAD_TEXT, f"{loc}: unreadable text, invalid UTF-8 "
                                                        f"at byte {err.start}", self.name)
                    continue
                try:
                    row = loads_json(line, loc, MAX_DEPTH + 1)   # + the row object
                except FileProblem as err:
                    yield lineno, broken(loc, err.kind, str(err), self.name)
                    continue
                if not isinstance(row, dict):
                    row = broken(loc, BAD_ENTRY, f"{loc}: a manifest line must be a JSON object",
                                 self.name)
                yield lineno, row

    def _csv_rows(self):
        raw = self.path.read_bytes().decode("utf-8", "surrogateescape")
        delim = "\t" if self.path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delim)
        last_error = -1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:        # one bad row (a field over the limit, ...) only
                n = reader.line_num + 1     # the reader counts the failed line only later
                loc = f"{self.path}:{n}"
                kind = FIELD_TOO_LARGE if "field limit" in str(err) else BAD_ENTRY
                yield n, broken(loc, kind, f"{loc}: unreadable CSV row ({err})", self.name)
                if n == last_error:         # no progress: the rest of the file is unreadable
                    return
                last_error = n
                continue
            # Undecodable bytes stay as surrogates: text goes on as bytes (checked when decoded),
            # an image path with them is refused, other columns get U+FFFD.
            yield reader.line_num, {k: _csv_field(k, v) for k, v in row.items() if k is not None}

    def _record(self, loc: str, row: dict) -> RawRecord:
        try:
            for k, v in row.items():
                check_field(v, f"{loc}: field {str(k)[:40]!r}")
        except FileProblem as err:
            return broken(loc, err.kind, str(err), self.name)
        rel = next((row[k] for k in _IMAGE_KEYS if row.get(k) not in (None, "")), None)
        text = next((row[k] for k in _TEXT_KEYS if row.get(k) not in (None, "", b"")), None)
        meta = self._row_meta(loc, row)
        if isinstance(meta, RawRecord):
            return meta
        image = uri = None
        if rel is not None:
            try:
                if not isinstance(rel, str) or _has_surrogate(rel):
                    raise FileProblem(BAD_ENTRY, f"{loc}: image path is not valid text")
                path = resolve_inside(self.root, rel)
                image, uri = read_file(path, f"{loc} ({rel})", self.max_bytes), str(path)
            except FileProblem as err:
                return broken(loc, err.kind, f"{loc}: {err}", self.name)
            meta["path"] = rel
        if text is not None and not isinstance(text, (str, bytes)):
            return broken(loc, BAD_ENTRY, f"{loc}: text must be a string", self.name)
        return make_record(loc, image, text, image_uri=uri or "", source=self.name, meta=meta)

    def _row_meta(self, loc: str, row: dict):
        try:
            meta = parse_meta(row.get("meta"), f"{loc}: meta")
        except FileProblem as err:
            return broken(loc, err.kind, str(err), self.name)
        if row.get("id") not in (None, ""):
            meta["source_id"] = row["id"]
        skip = set(_IMAGE_KEYS) | set(_TEXT_KEYS) | {"id", "meta"}
        for k, v in row.items():
            if k not in skip and v not in (None, ""):
                meta.setdefault(k, v)
        return meta


def parse_meta(value, name: str) -> dict:
    """A record's metadata field as a new dict: empty -> {}, a JSON-object string (parsed with
    :func:`solar.data.meta.loads_json`) or a dict -> its items.  Raises FileProblem naming
    ``name`` for anything else (bad or too deep JSON, a list, a number)."""
    if value is None or (isinstance(value, (str, bytes, dict)) and not value):
        return {}
    if isinstance(value, (str, bytes)):
        value = loads_json(value, name)
    if not isinstance(value, dict):
        raise FileProblem(BAD_ENTRY, f"{name} must be a JSON object")
    return dict(value)


def _csv_field(key: str, value):
    if value is None or key in _IMAGE_KEYS:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    return raw if key in _TEXT_KEYS else raw.decode("utf-8", "replace")


def _has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)
