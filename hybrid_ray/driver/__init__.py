"""Thin ``python -m`` entry points (Tevatron style); the logic lives in the library modules."""
