"""Decoding: a RawRecord becomes a Document (RGB image and/or str text) or a Quarantined one.

Runs in worker processes during ingestion, so it is a plain module-level function of picklable
arguments.  It never raises for bad content: every failure becomes a reason that names the item.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional, Union

from .document import Document
from .records import (BAD_TEXT, CORRUPT_IMAGE, EMPTY_DOCUMENT, TOO_MANY_PIXELS, ZERO_BYTES,
                      Quarantined, RawRecord)

DEFAULT_MAX_PIXELS = 89_478_485   # PIL's own default Image.MAX_IMAGE_PIXELS (about 0.25 GB RGBA)


@dataclass(frozen=True)
class DecodeConfig:
    """max_pixels: width*height above which an image is refused as a decompression bomb;
    max_side: images larger than this on their long side are shrunk (aspect kept) in the worker,
    None keeps the full size."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: Optional[int] = 512

    def __post_init__(self):
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {self.max_pixels!r}")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 1):
            raise ValueError(f"max_side must be a positive int or None, got {self.max_side!r}")


class ImageError(ValueError):
    """An image that cannot be used; ``kind`` is a quarantine kind."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def to_rgb(img):
    """Any PIL image as 8-bit RGB: transparency (RGBA, LA, P, PA) pasted on white, CMYK and YCbCr
    converted, 16-bit and 32-bit integer and float greyscale scaled to 0..255."""
    from PIL import Image
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _scale_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency"
                                                            in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def _scale_to_l(img):
    """16-bit / int32 / float greyscale -> 8-bit L, scaled by the range its mode allows."""
    import numpy as np
    from PIL import Image
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "F":
        top = float(a.max()) if a.size and a.max() > 1.0 else 1.0
    else:
        top = 65535.0 if a.size and a.max() > 255 else 255.0
    out = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def open_image(data: bytes, name: str, cfg: DecodeConfig = DecodeConfig()):
    """Decode image bytes to an RGB PIL image (EXIF orientation applied, shrunk to cfg.max_side).

    Raises ImageError (with a quarantine kind) naming ``name`` for zero bytes, an unreadable,
    corrupt or truncated file, or more than cfg.max_pixels pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    if len(data) == 0:
        raise ImageError(ZERO_BYTES, f"{name}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > cfg.max_pixels:
                raise ImageError(TOO_MANY_PIXELS, f"{name}: image is {w}x{h} = {w * h} pixels, "
                                 f"over the limit of {cfg.max_pixels} (decompression bomb guard)")
            if w < 1 or h < 1:
                raise ImageError(CORRUPT_IMAGE, f"{name}: image has size {w}x{h}")
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(TOO_MANY_PIXELS, f"{name}: {err}") from None
    except UnidentifiedImageError:
        raise ImageError(CORRUPT_IMAGE, f"{name}: not a readable image (unknown or corrupt "
                                        f"format, {len(data)} bytes)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        raise ImageError(CORRUPT_IMAGE, f"{name}: corrupt or truncated image ({err})") from None
    img = to_rgb(img)
    if cfg.max_side is not None and max(img.size) > cfg.max_side:
        img.thumbnail((cfg.max_side, cfg.max_side), Image.Resampling.BICUBIC)
    return img


def decode_text(data: Optional[bytes], name: str) -> Optional[str]:
    """UTF-8 bytes -> stripped str ("" becomes None).  Raises ValueError naming ``name`` and the
    byte offset for invalid UTF-8."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: unreadable text, invalid UTF-8 at byte {err.start} "
                         f"({err.reason})") from None
    text = text.strip()
    return text or None


def decode_record(raw: RawRecord, cfg: DecodeConfig = DecodeConfig()
                  ) -> Union[Document, Quarantined]:
    """A raw record -> a Document, or a Quarantined one with the reason.  Never raises for
    bad content (a good record is never lost because of a bad one)."""
    def bad(kind, reason):
        return Quarantined(raw.id, raw.locator, kind, reason, raw.source)

    if raw.problem is not None:
        return bad(raw.problem.kind, raw.problem.reason)
    try:
        text = decode_text(raw.text, raw.locator)
    except ValueError as err:
        return bad(BAD_TEXT, str(err))
    image = None
    if raw.image is not None:
        try:
            image = open_image(raw.image, raw.locator, cfg)
        except ImageError as err:
            return bad(err.kind, str(err))
        except Exception as err:  # noqa: BLE001 - a decoder bug must not end the run
            return bad(CORRUPT_IMAGE, f"{raw.locator}: image decoder failed ({type(err).__name__}: "
                                      f"{err})")
    if image is None and text is None:
        return bad(EMPTY_DOCUMENT, f"{raw.locator}: empty text and no image")
    return Document(text=text, image=image, id=raw.id, locator=raw.locator,
                    image_uri=raw.image_uri, source=raw.source, meta=dict(raw.meta))


def decode_many(raws: list, cfg: DecodeConfig = DecodeConfig()) -> list:
    """decode_record over a chunk (one task per chunk keeps worker round trips few)."""
    return [decode_record(r, cfg) for r in raws]
