"""Turn a rank's slice of a hybrid global batch into tokenised query / passage tensors.

Row i of a ``GlobalBatch`` slice is (pair, query language, passage language). The query text is
the ``query`` of the table row (pair, q_lang); the passage and its hard negatives come from the
row (pair, p_lang), so for a cross batch the negatives are in the passage language, exactly like
the positive they compete with.

The passage tensor is laid out as ``DistributedInfoNCE`` expects: the b positives first, then
``b * num_negatives`` hard negatives (query-major: query 0's n, query 1's n, ...). Every rank must
send the same number of passages through the loss's all_gather, so a row with fewer hard
negatives than ``num_negatives`` is filled deterministically: first by cycling the row's own
negatives, and if it has none, with the positives of the following rows of the slice (which are
true negatives for it: the sampler never puts one pair twice in a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from hybrid_ray.errors import ConfigError, DataError
from hybrid_ray.sampler import GlobalBatch

TokenizeFn = Callable[[list[str], str], dict[str, torch.Tensor]]


class PairLookup(Protocol):
    """What the collator needs from ``hybrid_ray.data.parallel.ParallelPairs``."""

    langs: list[str]
    row_of: np.ndarray  # int (n_pairs, n_langs), -1 = missing

    def column(self, name: str, rows: Sequence[int] | np.ndarray) -> list: ...


class HybridCollator:
    """``collator(batch_slice, pairs) -> {"query": {...}, "passage": {...}, ...}``.

    ``encoder`` is a ``DualEncoder`` (its ``tokenize(texts, kind)`` adds the query/passage
    prefixes and truncates) or any ``fn(texts, kind) -> dict of tensors``.
    """

    def __init__(
        self,
        encoder: Any,
        num_negatives: int = 0,
        *,
        query_column: str = "query",
        positive_column: str = "positive",
        negatives_column: str = "negatives",
    ) -> None:
        if num_negatives < 0:
            raise ConfigError("must be >= 0", key="data.num_negatives", value=num_negatives)
        self.tokenize: TokenizeFn = encoder.tokenize if hasattr(encoder, "tokenize") else encoder
        self.num_negatives = int(num_negatives)
        self.query_column = query_column
        self.positive_column = positive_column
        self.negatives_column = negatives_column

    def texts(self, batch: GlobalBatch, pairs: PairLookup) -> tuple[list[str], list[str]]:
        """Untokenised ``(queries [b], passages [b * (1 + n)])`` (useful for logging and tests)."""
        q_rows = self._rows(pairs, batch.pair_idx, batch.q_lang)
        p_rows = self._rows(pairs, batch.pair_idx, batch.p_lang)
        queries = [str(t) for t in pairs.column(self.query_column, q_rows)]
        positives = [str(t) for t in pairs.column(self.positive_column, p_rows)]
        passages = list(positives)
        n = self.num_negatives
        if n:
            negs = pairs.column(self.negatives_column, p_rows)
            b = len(positives)
            for i, row_negs in enumerate(negs):
                row_negs = [str(t) for t in (row_negs or [])]
                if row_negs:
                    passages.extend(row_negs[j % len(row_negs)] for j in range(n))
                elif b > 1:
                    passages.extend(positives[(i + 1 + j % (b - 1)) % b] for j in range(n))
                else:
                    raise DataError(
                        f"cannot fill {n} hard negatives: the row has none and the batch slice has "
                        "one pair; use num_negatives=0 or give rows hard negatives",
                        field=self.negatives_column,
                    )
        return queries, passages

    def __call__(self, batch: GlobalBatch, pairs: PairLookup) -> dict[str, Any]:
        queries, passages = self.texts(batch, pairs)
        return {
            "query": dict(self.tokenize(queries, "query")),
            "passage": dict(self.tokenize(passages, "passage")),
            "kind": batch.kind,
            "pair_idx": torch.as_tensor(batch.pair_idx, dtype=torch.long),
            "q_lang": torch.as_tensor(batch.q_lang, dtype=torch.long),
            "p_lang": torch.as_tensor(batch.p_lang, dtype=torch.long),
            "num_negatives": self.num_negatives,
        }

    @staticmethod
    def _rows(pairs: PairLookup, pair_idx: np.ndarray, lang_idx: np.ndarray) -> np.ndarray:
        rows = np.asarray(pairs.row_of)[np.asarray(pair_idx, np.int64), np.asarray(lang_idx, np.int64)]
        if (rows < 0).any():
            i = int(np.argmax(rows < 0))
            raise DataError(
                f"pair index {int(pair_idx[i])} has no row in language "
                f"{pairs.langs[int(lang_idx[i])]!r} (the sampler's availability matrix does not match "
                "this data)", field="lang",
            )
        return rows
