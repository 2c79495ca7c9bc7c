"""Data formats and loaders. See ``schema`` for the canonical layout.

Only the light modules are imported here; the format loaders (``lareqa``, ``miracl``,
``mmarco``, ``demo``, ``stats``) are imported where used so that importing the package stays cheap.
"""

from hybrid_ray.data.pairs import list_splits, read_pairs, write_pairs
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.data.schema import LANGUAGES, PAIRS_SCHEMA, check_lang, validate_pairs_table

__all__ = [
    "LANGUAGES",
    "PAIRS_SCHEMA",
    "ParallelPairs",
    "RetrievalSet",
    "check_lang",
    "list_splits",
    "read_pairs",
    "validate_pairs_table",
    "write_pairs",
]
