"""Decoding: every bad-record kind becomes a reason naming the item; colour modes become RGB."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from solar.data import (DecodeConfig, Document, Quarantined, content_id, decode_record,
                        make_record, open_image, to_rgb)
from solar.data.records import broken
from test_milvus_common import picture, png_bytes


def _noise_png() -> bytes:
    rng = np.random.default_rng(0)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))


def _decode(image, text, **cfg):
    return decode_record(make_record("item-7", image, text), DecodeConfig(**cfg))


def test_good_record_decodes_to_rgb_and_stripped_text():
    out = _decode(png_bytes(picture(1)), "  apple boat \n")
    assert isinstance(out, Document)
    assert out.image.mode == "RGB" and out.image.size == (48, 40)
    assert out.text == "apple boat"


@pytest.mark.parametrize("image,text,kind,needle", [
    (b"", "caption", "zero_bytes", "0 bytes"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "caption", "corrupt_image", "item-7"),
    (b"this is not an image at all", "caption", "corrupt_image", "not a readable image"),
    (_noise_png()[:3000], "caption", "corrupt_image", "truncated"),
    (png_bytes(Image.new("L", (400, 300))), "caption", "too_many_pixels", "120000 pixels"),
    (None, b"caf\xe9 ok", "bad_text", "invalid UTF-8 at byte 3"),
    (None, "   ", "empty_document", "empty text and no image"),
    (None, None, "empty_document", "empty text and no image"),
    (None, "lone \ud800 surrogate", "bad_text", "invalid UTF-8"),
], ids=["zero", "png-garbage", "not-image", "truncated", "bomb", "bad-utf8", "blank", "nothing",
        "surrogate"])
def test_bad_records_are_quarantined_with_a_reason(image, text, kind, needle):
    out = _decode(image, text, max_pixels=100_000)
    assert isinstance(out, Quarantined), out
    assert out.kind == kind
    assert "item-7" in out.reason and needle in out.reason


def test_bad_text_with_good_image_is_still_quarantined():
    out = _decode(png_bytes(picture(1)), b"\xff\xfe")
    assert isinstance(out, Quarantined) and out.kind == "bad_text"


def test_problem_from_the_reader_passes_through():
    out = decode_record(broken("m.jsonl:3", "missing_file", "m.jsonl:3: file not found"))
    assert isinstance(out, Quarantined) and out.kind == "missing_file" and "m.jsonl:3" in out.reason


def test_pixel_limit_is_configurable_and_pil_bomb_error_is_caught():
    data = png_bytes(Image.new("L", (400, 300)))
    assert isinstance(_decode(data, None, max_pixels=120_000), Document)
    assert isinstance(_decode(data, None, max_pixels=119_999), Quarantined)
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeConfig(max_pixels=0)


def test_alpha_is_pasted_on_white():
    img = Image.new("RGBA", (4, 4), (10, 200, 30, 0))
    img.putpixel((0, 0), (10, 200, 30, 255))
    rgb = to_rgb(img)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (10, 200, 30)
    la = to_rgb(Image.new("LA", (2, 2), (0, 0)))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_cmyk_and_16_bit():
    p = Image.new("P", (3, 3), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 1
    out = open_image(png_bytes(p), "p.png")
    assert out.getpixel((1, 1)) == (255, 255, 255)       # transparent index -> white
    cmyk = open_image(png_bytes(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), "JPEG"), "c.jpg")
    r, g, b = cmyk.getpixel((2, 2))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60
    a16 = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    i16 = Image.fromarray(a16)
    out16 = open_image(png_bytes(i16), "deep.png")
    vals = [out16.getpixel(xy)[0] for xy in [(0, 0), (1, 0), (0, 1), (1, 1)]]
    assert vals == [0, 128, 255, 4]


def test_large_images_are_shrunk_keeping_aspect():
    data = png_bytes(picture(5, size=(1000, 500)))
    assert open_image(data, "x", DecodeConfig(max_side=100)).size == (100, 50)
    assert open_image(data, "x", DecodeConfig(max_side=None)).size == (1000, 500)


def test_content_id_is_stable_and_content_based():
    img = png_bytes(picture(1))
    a = content_id(img, b"apple")
    assert a == content_id(img, b"  apple\n") and len(a) == 32
    assert a != content_id(img, b"apples")
    assert a != content_id(png_bytes(picture(2)), b"apple")
    assert content_id(None, b"apple") != content_id(b"apple", None)
    assert make_record("x", img, "apple").id == a == make_record("elsewhere", img, b"apple").id
