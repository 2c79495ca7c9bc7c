"""HybridCollator: the right texts from the right rows, the loss's passage layout, tokenisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from hybrid_ray.collator import HybridCollator
from hybrid_ray.errors import DataError
from hybrid_ray.sampler import GlobalBatch, HybridBatchSampler, rank_slice

LANGS = ["de", "en", "zh"]


class FakePairs:
    """ParallelPairs-like lookup: row = pair * n_langs + lang, missing cells = -1."""

    def __init__(self, n_pairs: int, missing: Sequence[tuple[int, int]] = (), n_negs: int = 2) -> None:
        self.langs = LANGS
        self.row_of = np.arange(n_pairs * len(LANGS)).reshape(n_pairs, len(LANGS))
        for p, lang in missing:
            self.row_of[p, lang] = -1
        self.n_negs = n_negs

    def column(self, name: str, rows: Sequence[int] | np.ndarray) -> list:
        out = []
        for r in np.asarray(rows).tolist():
            p, lang = divmod(r, len(LANGS))
            tag = f"{LANGS[lang]}{p}"
            if name == "query":
                out.append(f"q-{tag}")
            elif name == "positive":
                out.append(f"p-{tag}")
            else:
                out.append([f"n{j}-{tag}" for j in range(self.n_negs)])
        return out


def fake_tokenize(texts: list[str], kind: str) -> dict[str, torch.Tensor]:
    """Deterministic 'tokenizer': one id per character, padded; records the kind in id 0."""
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width + 1, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(texts):
        ids[i, 0] = 1 if kind == "query" else 2
        ids[i, 1 : len(t) + 1] = torch.tensor([ord(c) for c in t])
        mask[i, : len(t) + 1] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _batch(kind: str, pairs: list[int], q: list[int], p: list[int]) -> GlobalBatch:
    a = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return GlobalBatch(kind, a(pairs), a(q), a(p))  # type: ignore[arg-type]


def test_cross_batch_texts_and_layout() -> None:
    col = HybridCollator(fake_tokenize, num_negatives=2)
    qs, ps = col.texts(_batch("cross", [4, 1, 7], [0, 2, 1], [1, 0, 2]), FakePairs(10))
    assert qs == ["q-de4", "q-zh1", "q-en7"]
    # b positives (passage language), then each query's 2 hard negatives from the SAME row.
    assert ps == ["p-en4", "p-de1", "p-zh7", "n0-en4", "n1-en4", "n0-de1", "n1-de1", "n0-zh7", "n1-zh7"]


def test_mono_batch_same_language_and_tokenised() -> None:
    col = HybridCollator(fake_tokenize, num_negatives=1)
    out = col(_batch("mono", [2, 3], [2, 2], [2, 2]), FakePairs(5))
    assert out["kind"] == "mono"
    assert out["query"]["input_ids"].shape[0] == 2 and out["passage"]["input_ids"].shape[0] == 4
    assert (out["query"]["input_ids"][:, 0] == 1).all() and (out["passage"]["input_ids"][:, 0] == 2).all()
    assert out["q_lang"].tolist() == [2, 2] and out["pair_idx"].tolist() == [2, 3]


def test_short_negatives_are_filled_deterministically() -> None:
    col = HybridCollator(fake_tokenize, num_negatives=3)
    _, ps = col.texts(_batch("mono", [0, 1], [1, 1], [1, 1]), FakePairs(3, n_negs=2))
    assert ps[2:] == ["n0-en0", "n1-en0", "n0-en0", "n0-en1", "n1-en1", "n0-en1"]  # cycled
    _, ps = col.texts(_batch("mono", [0, 1, 2], [1, 1, 1], [1, 1, 1]), FakePairs(3, n_negs=0))
    # no hard negatives: the following rows' positives (never the row's own positive)
    assert ps[3:] == ["p-en1", "p-en2", "p-en1", "p-en2", "p-en0", "p-en2", "p-en0", "p-en1", "p-en0"]


def test_missing_cell_is_a_clear_error() -> None:
    col = HybridCollator(fake_tokenize)
    with pytest.raises(DataError, match="no row in language 'zh'"):
        col(_batch("cross", [0, 1], [0, 0], [2, 2]), FakePairs(3, missing=[(1, 2)]))


def test_with_sampler_slices_on_partially_parallel_data() -> None:
    rng = np.random.default_rng(0)
    n = 64
    missing = [(p, lang) for p in range(n) for lang in range(3) if rng.random() < 0.3]
    pairs = FakePairs(n, missing=missing)
    avail = pairs.row_of >= 0
    sampler = HybridBatchSampler(avail, LANGS, global_batch_size=8, alpha=0.5, seed=3)
    col = HybridCollator(fake_tokenize, num_negatives=1)
    for step in range(sampler.steps_per_epoch):
        for r in range(2):
            s = rank_slice(sampler.batch(0, step), r, 2)
            qs, ps = col.texts(s, pairs)
            assert len(qs) == 4 and len(ps) == 8
            for i in range(4):
                assert qs[i] == f"q-{LANGS[s.q_lang[i]]}{s.pair_idx[i]}"
                assert ps[i] == f"p-{LANGS[s.p_lang[i]]}{s.pair_idx[i]}"


def test_with_tiny_encoder_tokenize() -> None:
    testing = pytest.importorskip("hybrid_ray.testing")
    enc = testing.tiny_encoder()
    col = HybridCollator(enc, num_negatives=1)
    out = col(_batch("cross", [0, 1], [0, 1], [1, 0]), FakePairs(2))
    emb_q = enc(**{k: out["query"][k] for k in ("input_ids", "attention_mask")})
    emb_p = enc(**{k: out["passage"][k] for k in ("input_ids", "attention_mask")})
    assert emb_q.shape == (2, enc.dim) and emb_p.shape == (4, enc.dim)


def test_with_real_parallel_pairs() -> None:
    pa = pytest.importorskip("pyarrow")
    parallel = pytest.importorskip("hybrid_ray.data.parallel")
    rows = [
        {"pair_id": f"p{i}", "lang": lang, "query": f"q {lang} {i}", "positive": f"pos {lang} {i}",
         "negatives": [f"neg {lang} {i}"]}
        for i in range(12) for lang in ("de", "en", "zh") if not (lang == "zh" and i % 3 == 0)
    ]
    pairs = parallel.ParallelPairs.from_table(pa.Table.from_pylist(rows))
    sampler = HybridBatchSampler(pairs.available, pairs.langs, 4, alpha=0.5, seed=0)
    col = HybridCollator(fake_tokenize, num_negatives=1)
    for step in range(sampler.steps_per_epoch):
        b = sampler.batch(0, step)
        qs, ps = col.texts(b, pairs)
        for i in range(4):
            pid = pairs.pair_ids[int(b.pair_idx[i])].removeprefix("p")
            assert qs[i] == f"q {pairs.langs[b.q_lang[i]]} {pid}"
            assert ps[i] == f"pos {pairs.langs[b.p_lang[i]]} {pid}"
            assert ps[4 + i] == f"neg {pairs.langs[b.p_lang[i]]} {pid}"
