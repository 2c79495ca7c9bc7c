"""The HTTP contract in-process (no Ray): one error shape, text isolation, limits in the schema,
the OpenAI embeddings route through the official ``openai`` client."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    from bench.serve_baseline import LocalRetriever
    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.serving.http import make_api

    rows = [{"docid": f"d{i}", "lang": ("en", "de")[i % 2], "text": f"god light day {i}"} for i in range(20)]
    out = tmp_path_factory.mktemp("contract") / "index"
    build_sharded_index(tiny_model_dir, pa.Table.from_pylist(rows), out, shards=2, local=True)
    with TestClient(make_api(LocalRetriever({"index_dir": str(out), "k_limit": 20, "max_embed_texts": 4}))) as c:
        yield c


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("body,headers,status", [
    (b'{"query": "\\ud800"}', JSON, 422),  # lone surrogate: valid JSON, not text
    (b'{"query": "\xff\xfe"}', JSON, 400),  # invalid UTF-8
    (b'{"query": "   "}', JSON, 422),
    (b'{"query": "god"}', {"content-type": "text/plain"}, 415),
    (b'{"query": "god", "k": 0}', JSON, 422),
    (b'{"query": ', JSON, 400),
])
def test_every_refusal_is_one_error_shape(client, body, headers, status):
    r = client.post("/search", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and r.json()["error"]


def test_404_405_use_the_error_shape(client):
    for r, status in ((client.get("/nope"), 404), (client.get("/search"), 405)):
        assert r.status_code == status and set(r.json()) == {"error", "detail"}


def test_limits_are_in_the_openapi_schema(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == 20
    assert schemas["EmbedRequest"]["properties"]["texts"]["maxItems"] == 4


def test_openai_client_embeddings(client):
    import openai

    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    res = api.embeddings.create(input=["god light", "day"], model="tiny")  # client asks for base64
    assert len(res.data) == 2 and res.model == "tiny" and res.usage.prompt_tokens > 0
    direct = client.post("/embed", json={"texts": ["god light", "day"]}).json()["embeddings"]
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), direct, rtol=1e-5)
    floats = api.embeddings.create(input="day", model="tiny", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, direct[1], rtol=1e-5)
    with pytest.raises(openai.UnprocessableEntityError) as err:
        api.embeddings.create(input=[], model="tiny")
    assert err.value.body["message"] == "input is an empty list"


def test_schema_fuzzing_never_5xx(client):
    """Property-based requests from the app's own OpenAPI schema (schemathesis): no 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures = []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            r = case.call()
            if r.status_code >= 500:
                failures.append((case.method, case.path, r.status_code))

        check()
    assert not failures
