"""Ray Serve retrieval over a sharded FAISS index, split by concern.

``hybrid_ray.serving.app:build_app`` is the application (``serve run`` / ``serve deploy`` /
RayService / ``hybrid-ray serve``). Modules: :mod:`.args` (AppArgs, GPU planning), :mod:`.shard`
(one shard loaded and searched, the exact merge across shards), :mod:`.http` (models, routes,
errors), :mod:`.metrics` (Prometheus), :mod:`.batching` (gated ``@serve.batch``),
:mod:`.encoder` (the query encoder), :mod:`.app` (the Ray Serve deployments). Nothing is imported
here, so importing one concern (e.g. the HTTP models) does not pull in Ray Serve.
"""
