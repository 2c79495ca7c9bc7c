"""The app under Ray Serve's direct ingress (``hybrid-ray serve --direct-ingress``): no proxy in front.

Direct ingress moves HTTP into the Retriever replica, so everything the proxy used to do for us
must still hold there: the stalled-upload guard (408 after ``body_timeout_s``, /health answered
within 1 s with 200 stalled connections), the one error contract, and correct answers. The
cluster is started with :func:`hybrid_ray.driver.serve.direct_ingress_env` set, as the CLI does, so
the replica binds the requested port itself.
"""

from __future__ import annotations

import httpx
import pytest

from hybrid_ray.local import free_port
from tests.serve.test_serve_resilience import BODY_TIMEOUT_S, _corpus, _deploy, check_stalled_clients


@pytest.fixture(scope="module")
def direct_cluster(tiny_model_dir, tmp_path_factory):
    import ray
    from ray import serve

    from hybrid_ray.driver.serve import direct_ingress_env
    from hybrid_ray.index import build_sharded_index
    from hybrid_ray.local import init_ray

    index = tmp_path_factory.mktemp("direct-ingress") / "index"
    build_sharded_index(tiny_model_dir, _corpus(), index, shards=2, local=True)
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in direct_ingress_env(port).items():
            mp.setenv(key, value)  # read by the Ray processes init_ray starts
        init_ray(num_cpus=4)
        try:
            proxy_port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})  # Serve's proxy: not ours
            url = f"http://127.0.0.1:{port}"
            # One deployment for both tests: a replaced direct-ingress replica binds the next port of the
            # range while the old one drains (Ray's 30 s minimum), so a redeploy would move the URL.
            _deploy("direct", index, url, body_timeout_s=BODY_TIMEOUT_S)
            yield index, url, proxy_port
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.mark.slow
def test_direct_ingress_answers_and_keeps_the_error_contract(direct_cluster):
    _, url, proxy_port = direct_cluster
    with httpx.Client(base_url=url, timeout=10) as http:
        r = http.post("/search", json={"query": "god light", "k": 3})
        assert r.status_code == 200 and len(r.json()["hits"]) == 3, r.text
        assert http.get("/ready").status_code == 200
        for resp, status in ((http.get("/no-such-route"), 404),
                             (http.post("/search", content=b'{"query": "\\ud800"}',
                                        headers={"content-type": "application/json"}), 422),
                             (http.post("/search", content=b'{"query": "x"}',
                                        headers={"content-type": "text/plain"}), 415)):
            assert resp.status_code == status, (status, resp.text)
            assert set(resp.json()) == {"error", "detail"}, resp.text
    # Serve's proxy listens on another port (the fixture's serve.start), so every answer above came
    # from the Retriever replica's own HTTP server.
    assert proxy_port != int(url.rsplit(":", 1)[1])


@pytest.mark.slow
def test_direct_ingress_stalled_clients_get_408_and_never_lock_out_probes(direct_cluster):
    index, url, _ = direct_cluster
    check_stalled_clients(index, url, deploy=False)
