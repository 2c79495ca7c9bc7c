"""Ray Serve retrieval application (serve.app:build_app) and its `hybrid-ray serve` driver."""
