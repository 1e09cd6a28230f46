"""The collection schema on a real Milvus Lite: creation, the model check, retries, the embedding
function protocol."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from pymilvus import DataType, MilvusClient  # noqa: E402
from pymilvus.exceptions import MilvusException  # noqa: E402

from solar_milvus.embedding import Document, SolarEmbeddingFunction, model_fingerprint  # noqa: E402
from solar_milvus.store import (SchemaMismatchError, StoreError, connect, count,  # noqa: E402
                                open_collection, redact, upsert_rows)
from test_milvus_common import HashEncoder, picture  # noqa: E402


@pytest.fixture
def client(tmp_path):
    return connect(str(tmp_path / "s.db"))


def _rows(n, dim=32, fp="hash-encoder-v1"):
    rng = np.random.default_rng(0)
    return [{"id": f"{i:032x}", "vector": rng.standard_normal(dim).astype(np.float32).tolist(),
             "text": f"t{i}", "image_uri": "", "source": "test", "meta": {"i": i}, "model": fp}
            for i in range(n)]


def test_schema_is_explicit_and_carries_the_fingerprint(client):
    assert open_collection(client, "docs", 32, "fp-a") is True
    desc = client.describe_collection("docs")
    fields = {f["name"]: f for f in desc["fields"]}
    assert set(fields) == {"id", "vector", "text", "image_uri", "source", "meta", "model"}
    assert fields["id"]["is_primary"] and fields["vector"]["params"]["dim"] == 32
    assert fields["meta"]["type"] == DataType.JSON
    assert desc["properties"]["solar.fingerprint"] == "fp-a"
    assert open_collection(client, "docs", 32, "fp-a") is False      # reopening is fine


def test_other_dimension_is_refused_before_writing(client):
    open_collection(client, "docs", 32, "fp-a")
    upsert_rows(client, "docs", _rows(3, fp="fp-a"))
    with pytest.raises(SchemaMismatchError, match=r"dimension 32 but the model gives 16"):
        open_collection(client, "docs", 16, "fp-a")
    with pytest.raises(SchemaMismatchError, match=r"written by model fp-a .* in use is fp-b"):
        open_collection(client, "docs", 32, "fp-b")
    assert count(client, "docs") == 3


def test_both_differences_are_named(client):
    open_collection(client, "docs", 32, "fp-a")
    with pytest.raises(SchemaMismatchError) as err:
        open_collection(client, "docs", 64, "fp-b")
    assert "dimension 32" in str(err.value) and "fp-b" in str(err.value)


def test_a_foreign_collection_is_refused(client):
    s = MilvusClient.create_schema(auto_id=False)
    s.add_field("pk", DataType.INT64, is_primary=True)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=32)
    ip = client.prepare_index_params()
    ip.add_index("vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection("other", schema=s, index_params=ip)
    with pytest.raises(SchemaMismatchError, match="not a solar collection"):
        open_collection(client, "other", 32, "fp")


def test_missing_collection_without_create(client):
    with pytest.raises(ValueError, match="does not exist"):
        open_collection(client, "nope", 32, "fp", create=False)


class _Flaky:
    """A real client whose first ``fail`` upserts raise (failure injection, the store is real)."""

    def __init__(self, inner, fail):
        self.inner, self.fail = inner, fail

    def upsert(self, *a, **k):
        if self.fail > 0:
            self.fail -= 1
            raise MilvusException(message="transient: server busy")
        return self.inner.upsert(*a, **k)


def test_upsert_retries_then_succeeds_or_gives_up(client):
    open_collection(client, "docs", 32, "fp")
    waits = []
    assert upsert_rows(_Flaky(client, 2), "docs", _rows(4), retries=3, sleep=waits.append) == 4
    assert waits == [0.5, 1.0] and count(client, "docs") == 4
    with pytest.raises(StoreError, match="after 3 attempts"):
        upsert_rows(_Flaky(client, 5), "docs", _rows(4), retries=2, sleep=waits.append)


def test_connect_errors_and_redaction(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.db"):
        connect(str(tmp_path / "x.lite"))
    assert redact("http://root:Milvus@host:19530") == "http://***@host:19530"
    assert redact("./a.db") == "./a.db"


def test_embedding_function_protocol():
    emb = SolarEmbeddingFunction(HashEncoder(), batch_size=2, device="cpu")
    assert emb.dim == 32 and emb.fingerprint == "hash-encoder-v1"
    img = picture(3)
    docs = ["apple boat", img, {"text": "apple boat", "image": img}, (img, "apple"),
            Document(text="kettle")]
    out = emb.encode_documents(docs)
    assert len(out) == 5 and all(v.shape == (32,) and v.dtype == np.float32 for v in out)
    np.testing.assert_allclose([np.linalg.norm(v) for v in out], 1.0, rtol=1e-5)
    q = emb.encode_queries(["apple boat", img])
    np.testing.assert_array_equal(q[0], out[0])                # symmetric: same encoder
    np.testing.assert_array_equal(q[1], out[1])
    np.testing.assert_array_equal(emb(["kettle"])[0], out[4])
    with pytest.raises(ValueError, match=r"documents\[1\] is empty"):
        emb.encode_documents(["ok", {"text": "  "}])
    with pytest.raises(TypeError, match=r"documents\[0\]"):
        emb.encode_documents([42])
    with pytest.raises(ValueError, match="unknown keys"):
        emb.encode_documents([{"txt": "typo"}])


def test_fingerprint_is_computed_when_the_model_has_none():
    torch = pytest.importorskip("torch")

    class Plain(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.lin = torch.nn.Linear(4, 4)
            self.config = {"dim": 4}

    a, b, c = model_fingerprint(Plain(0)), model_fingerprint(Plain(0)), model_fingerprint(Plain(1))
    assert a == b != c and a.startswith("sha256:")
