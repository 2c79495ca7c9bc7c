"""Data formats and loaders. See ``schema`` for the canonical layout."""

from hybrid_ray.data.schema import LANGUAGES, PAIRS_SCHEMA, validate_pairs_table

__all__ = ["LANGUAGES", "PAIRS_SCHEMA", "validate_pairs_table"]
