"""HybridCollator: the right texts from the right rows, the loss's passage layout, tokenisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest
import torch

from hybrid_ray.collator import HybridCollator
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.errors import DataError
from hybrid_ray.modeling.encoder import EncoderConfig
from hybrid_ray.sampler import GlobalBatch, HybridBatchSampler, rank_slice
from hybrid_ray.testing import tiny_encoder

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


# Words the tiny tokenizer knows, so every token of a tokenised text can be read back.
LANG_WORD = {"de": "red", "en": "blue", "zh": "green"}
PAIR_WORD = ["one", "two", "three", "cat", "dog", "house", "god", "water"]


class WordPairs(FakePairs):
    """FakePairs whose texts are in the tiny vocabulary: '<lang word> <pair word> [light|night]'."""

    def column(self, name: str, rows: Sequence[int] | np.ndarray) -> list:
        out = []
        for r in np.asarray(rows).tolist():
            p, lang = divmod(r, len(LANGS))
            base = f"{LANG_WORD[LANGS[lang]]} {PAIR_WORD[p]}"
            out.append({"query": base, "positive": f"{base} light"}.get(name, [f"{base} night"]))
        return out


def _tokens(enc, features: dict[str, torch.Tensor]) -> list[list[str]]:
    """Tokens of each row without padding (and checks the mask marks exactly the non-pad ids)."""
    ids, mask = features["input_ids"], features["attention_mask"]
    assert torch.equal(mask.bool(), ids != enc.tokenizer.pad_token_id)
    return [enc.tokenizer.convert_ids_to_tokens(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)]


def test_with_tiny_encoder_tokenize() -> None:
    """Real tokenizer: prefixes present, and every query / passage / negative row of the tensors
    belongs to the pair and language the batch slice says, in the loss's layout."""
    enc = tiny_encoder(config=EncoderConfig(query_prefix="Query: ", passage_prefix="Passage: ")).eval()
    pairs = WordPairs(len(PAIR_WORD), missing=[(1, 2), (5, 0)])
    sampler = HybridBatchSampler(pairs.row_of >= 0, LANGS, global_batch_size=4, alpha=0.5, seed=1)
    col = HybridCollator(enc, num_negatives=1)
    kinds = set()
    for epoch, step in [(e, st) for e in range(4) for st in range(sampler.steps_per_epoch)]:
        for r in range(2):
            s = rank_slice(sampler.batch(epoch, step), r, 2)
            out = col(s, pairs)
            b = len(s.pair_idx)
            kinds.add(out["kind"])
            assert out["pair_idx"].tolist() == s.pair_idx.tolist()
            assert out["q_lang"].tolist() == s.q_lang.tolist() and out["p_lang"].tolist() == s.p_lang.tolist()
            q_tok, p_tok = _tokens(enc, out["query"]), _tokens(enc, out["passage"])
            assert len(q_tok) == b and len(p_tok) == 2 * b
            for i in range(b):
                pw = PAIR_WORD[int(s.pair_idx[i])]
                ql, pl = LANG_WORD[LANGS[int(s.q_lang[i])]], LANG_WORD[LANGS[int(s.p_lang[i])]]
                assert q_tok[i] == ["[CLS]", "query", ":", ql, pw, "[SEP]"]
                assert p_tok[i] == ["[CLS]", "passage", ":", pl, pw, "light", "[SEP]"]  # positive i
                assert p_tok[b + i] == ["[CLS]", "passage", ":", pl, pw, "night", "[SEP]"]  # its negative
                if out["kind"] == "mono":
                    assert ql == pl
                else:
                    assert ql != pl
            emb_q = enc(**out["query"])
            emb_p = enc(**out["passage"])
            assert emb_q.shape == (b, enc.dim) and emb_p.shape == (2 * b, enc.dim)
    assert kinds == {"mono", "cross"}


def test_with_real_parallel_pairs() -> None:
    rows = [
        {"pair_id": f"p{i}", "lang": lang, "query": f"q {lang} {i}", "positive": f"pos {lang} {i}",
         "negatives": [f"neg {lang} {i}"]}
        for i in range(12) for lang in ("de", "en", "zh") if not (lang == "zh" and i % 3 == 0)
    ]
    pairs = ParallelPairs.from_table(pa.Table.from_pylist(rows))
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
