"""One document type: every reader (offline sets included), the training data and the Milvus
plugin give and take ``solar.data.Document``."""
import io
import json
import pickle

import pytest

from solar.data import DecodeConfig, Document, decode_record, open_source


def _png(color=(200, 30, 30), size=(24, 20)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_kind_name_and_lazy_image():
    from PIL import Image
    img = Image.new("RGB", (8, 6), "white")
    calls = []

    def load():
        calls.append(1)
        return img
    lazy = Document(text="a kettle", image=load, id="x1", locator="shelf/kettle.png")
    assert lazy.kind == "image+text" and lazy.name == "shelf/kettle.png" and not calls
    assert lazy.load_image() is img and lazy.load_image(4).size == (4, 4) and len(calls) == 2
    assert Document(image=img).kind == "image" and Document(text="t").kind == "text"
    assert Document(text="t").load_image() is None
    assert Document(text="t", id="d9").name == "d9" and Document().name == "document"


def test_every_ingest_reader_decodes_to_document(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.png").write_bytes(_png())
    (tmp_path / "folder" / "a.txt").write_text("a red square")
    (tmp_path / "b.png").write_bytes(_png((0, 0, 200)))
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "b.png", "text": "a blue square"}) + "\n")
    for spec in (tmp_path / "folder", tmp_path / "m.jsonl"):
        out = [decode_record(r, DecodeConfig()) for r in open_source(str(spec))]
        assert len(out) == 1 and type(out[0]) is Document, spec
        d = out[0]
        assert d.kind == "image+text" and d.id and d.locator and d.image.mode == "RGB"


def test_offline_sets_and_training_data_are_documents():
    offline = pytest.importorskip("solar.data.offline")
    try:
        pairs = offline.clipart_pairs(3)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    from solar.train.features import docs_from_pairs
    for p in pairs:
        assert type(p) is Document and p.kind == "image+text" and p.image_uri.endswith(".png")
        assert p.source == "openclipart" and p.load_image().mode == "RGB"
    docs = docs_from_pairs(pairs)
    assert [type(d) for d in docs] == [Document] * 3 and [d.id for d in docs] == [p.id for p in pairs]
    back = pickle.loads(pickle.dumps(docs[0]))            # DataLoader workers receive documents
    assert back.load_image().size == pairs[0].load_image().size
    # the cached tuple behind clipart_pairs is not handed out: changing one changes no other call
    pairs[0].text = "changed"
    assert offline.clipart_pairs(1)[0].text != "changed"


def test_the_plugin_takes_the_same_type():
    pytest.importorskip("PIL")
    from solar_milvus import Document as PluginDocument
    from solar_milvus.embedding import as_document
    from PIL import Image
    assert PluginDocument is Document
    img = Image.new("RGB", (5, 5), "white")
    d = as_document(Document(text="kettle", image=lambda: img, id="k", meta={"a": 1}), 0)
    assert d.image is img and d.id == "k" and d.meta == {"a": 1}

    def broken():
        raise OSError("truncated file")
    with pytest.raises(ValueError, match=r"documents\[3\].image \(shelf/x.png\): truncated"):
        as_document(Document(text="x", image=broken, locator="shelf/x.png"), 3)
