"""Hard-negative mining: replace a pairs split's ``negatives`` with the encoder's own near misses.

The data files bring at most a random negative (the demo: another verse of the chapter). Here
each row's query is searched, exactly, against the positives of the split, and the best-scoring
passages that are *not* answers become its negatives. What is never a negative, because in a
parallel set it is an answer or the same text again (a false negative that would teach the
model to push the right answer away):

* the positive and every parallel version of it (same ``pair_id``, any language);
* exact duplicates of the query or of the positive (equal after :func:`normalize_texts`: NFKC,
  lower case, punctuation and whitespace runs folded), and near-duplicates: cosine to the
  positive (passage vs passage) or search score to the query at or above ``max_sim``;
* a second copy of a passage already taken as a negative of the same row.

Those are removed before ranking; the remaining candidates are ranked 1, 2, ... by score, and
only ranks ``range_min < r <= range_max`` are kept (skipping the closest ones guards against
unlabelled positives), then ``margin`` keeps only scores ``<= margin x`` the positive's score
(sentence-transformers ``mine_hard_negatives`` / FlagEmbedding ``hn_mine`` style), and the first
``num_negatives`` survivors, best first, are the negatives. Fewer survivors -> fewer negatives,
counted in the stats.

Scale: embeddings go through the same encoding path as ``hybrid-ray index`` (Ray Data actors, or
in-process for small sets) straight into float32 ``.npy`` memmaps in the work directory, and the
search is :func:`hybrid_ray.search.exact_search` (blockwise, GPU when FAISS sees one) over query
blocks sized so the extra memory stays near ``block_floats`` floats. Resumable: the memmaps carry
a key sidecar (model, texts, kind, batch size) and each finished language writes its result and
then a marker recording the parameters, so a rerun redoes only what is missing or stale.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybrid_ray.data.pairs import list_splits, read_pairs, write_pairs
from hybrid_ray.data.schema import check_lang
from hybrid_ray.encode import texts_digest
from hybrid_ray.encode_ray import choose_backend, encode_rows, write_rows_memmap
from hybrid_ray.errors import ConfigError
from hybrid_ray.io import atomic_dir, atomic_path, write_json_atomic
from hybrid_ray.search import exact_search

Report = Callable[[str], None]
WORK_FORMAT = 1


@dataclass(frozen=True)
class MiningConfig:
    """What to mine and how; every field that changes the result is part of the resume key."""

    num_negatives: int = 4
    range_min: int = 0
    range_max: int = 50
    margin: float | None = None  # keep negatives with score <= margin * positive score
    max_sim: float = 0.95  # cosine at/above which a candidate is a near-duplicate
    langs_mode: Literal["own", "all"] = "own"
    langs: tuple[str, ...] | None = None  # query languages to mine (None: all of the split)
    batch_size: int = 64
    encode: Literal["auto", "ray", "local"] = "auto"
    local_max_rows: int = 4096  # "auto" encodes in-process up to this many rows
    concurrency: int | None = None
    block_floats: int = 1 << 24  # extra floats held per query block (gathered candidate vectors)

    def check(self) -> MiningConfig:
        if self.num_negatives < 1:
            raise ConfigError("must be >= 1", key="num_negatives", value=self.num_negatives)
        if self.range_min < 0:
            raise ConfigError("must be >= 0", key="range_min", value=self.range_min)
        if self.range_max - self.range_min < self.num_negatives:
            raise ConfigError(f"the rank window ({self.range_min}, {self.range_max}] holds fewer than "
                              f"num_negatives={self.num_negatives} candidates", key="range_max",
                              value=self.range_max)
        if self.margin is not None and not 0 < self.margin <= 1.5:
            raise ConfigError("must be in (0, 1.5] (e.g. 0.95)", key="margin", value=self.margin)
        if not -1 < self.max_sim <= 1.0 + 1e-6:
            raise ConfigError("must be a cosine in (-1, 1]", key="max_sim", value=self.max_sim)
        if self.langs_mode not in ("own", "all"):
            raise ConfigError("must be 'own' or 'all'", key="langs_mode", value=self.langs_mode)
        if self.encode not in ("auto", "ray", "local"):
            raise ConfigError("must be auto, ray or local", key="encode", value=self.encode)
        if self.batch_size < 1:
            raise ConfigError("must be >= 1", key="batch_size", value=self.batch_size)
        return self

    def result_key(self) -> dict[str, Any]:
        """The fields that decide which negatives a row gets (not how fast they are computed)."""
        return {k: v for k, v in asdict(self).items()
                if k in ("num_negatives", "range_min", "range_max", "margin", "max_sim", "langs_mode")}


# --------------------------------------------------------------------------- texts
def normalize_texts(texts: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """NFKC, lower case, runs of punctuation / symbols / spaces -> one space, trimmed (vectorised)."""
    t = pc.utf8_lower(pc.utf8_normalize(texts, form="NFKC"))
    t = pc.replace_substring_regex(t, pattern=r"[\p{P}\p{S}\s]+", replacement=" ")
    return pc.utf8_trim_whitespace(t)


def _codes(*columns: pa.ChunkedArray) -> list[np.ndarray]:
    """Integer codes of the values of ``columns`` under ONE dictionary (equal text, equal code)."""
    joined = pa.chunked_array([c for col in columns for c in pa.chunked_array(col).chunks], pa.string())
    codes = pc.dictionary_encode(joined.combine_chunks()).indices.to_numpy(zero_copy_only=False)
    out, start = [], 0
    for col in columns:
        out.append(codes[start : start + len(col)].astype(np.int64))
        start += len(col)
    return out


# --------------------------------------------------------------------------- embeddings
def embed(
    model_dir: str | Path, texts: pa.ChunkedArray, kind: str, path: Path, cfg: MiningConfig,
    model_sha: str, report: Report,
) -> np.ndarray:
    """``texts`` encoded (``kind``) into a float32 memmap at ``path``; reused when its key matches."""
    digest, n = texts_digest(texts)
    key = {"format": WORK_FORMAT, "model_sha256": model_sha, "kind": kind, "texts_sha256": digest,
           "count": n, "batch_size": cfg.batch_size}
    meta = path.with_name(path.name + ".json")
    try:
        if json.loads(meta.read_text()).get("key") == key:
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == n and arr.dtype == np.float32:
                report(f"mine: reusing {path.name} ({arr.shape[0]} x {arr.shape[1]})")
                return arr
    except (OSError, ValueError):
        pass
    meta.unlink(missing_ok=True)
    backend = choose_backend(cfg.encode, n, cfg.local_max_rows)
    t0, last = time.perf_counter(), [0.0]

    def on_batch(done: int) -> None:
        last[0] = _progress(report, f"encode {kind} texts", done, n, t0, last[0])

    stream = encode_rows(backend, model_dir, texts, [(0, n)], batch_size=cfg.batch_size,
                         concurrency=cfg.concurrency, kind=kind)
    write_rows_memmap(stream, n, path, on_batch=on_batch)
    write_json_atomic(meta, {"key": key})
    return np.load(path, mmap_mode="r")


def _progress(report: Report, what: str, done: int, total: int, t0: float, last: float) -> float:
    """One ``done / total, elapsed, ETA`` line at most every 10 s (and at the end)."""
    now = time.perf_counter()
    if done < total and now - last < 10:
        return last
    el = now - t0
    eta = el / done * (total - done) if done else float("nan")
    report(f"mine: {what}: {done}/{total} rows ({100 * done / max(total, 1):.0f}%), "
           f"{el:.0f} s elapsed, ETA {eta:.0f} s")
    return now


# --------------------------------------------------------------------------- selection
@dataclass
class RowFacts:
    """Per-table-row integer facts the exclusion rules compare (all aligned with table rows)."""

    pair: np.ndarray  # pair_id code
    query_text: np.ndarray  # normalised query text code (shared dictionary with positive_text)
    positive_text: np.ndarray


def select_negatives(
    qrows: np.ndarray, scores: np.ndarray, ids: np.ndarray, pos_score: np.ndarray, pos_sim: np.ndarray,
    facts: RowFacts, cfg: MiningConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """``(pick [b, k] bool, complete [b] bool)`` for queries ``qrows`` and their ranked candidates.

    ``scores`` / ``ids`` are a search result (best first, id -1 = none); ``pos_score[i]`` is the
    query's score against its own positive, ``pos_sim[i, j]`` the cosine between that positive
    and candidate ``ids[i, j]``. ``complete[i]`` says the candidate list reached rank
    ``range_max`` among eligible candidates (else the caller must search wider).
    """
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    q = qrows[:, None]
    cand_text = facts.positive_text[safe]
    excluded = (~valid | (facts.pair[safe] == facts.pair[q]) | (cand_text == facts.query_text[q])
                | (cand_text == facts.positive_text[q]) | (scores >= cfg.max_sim) | (pos_sim >= cfg.max_sim))
    eligible = ~excluded
    # Keep the first (best-scoring) copy of each passage text per row.
    b, k = ids.shape
    flat = (np.arange(b)[:, None] * (int(cand_text.max(initial=0)) + 1) + cand_text).ravel()
    first = np.zeros(b * k, bool)
    order = np.flatnonzero(eligible.ravel())
    _, at = np.unique(flat[order], return_index=True)
    first[order[at]] = True
    eligible &= first.reshape(b, k)
    rank = np.cumsum(eligible, axis=1)
    keep = eligible & (rank > cfg.range_min) & (rank <= cfg.range_max)
    if cfg.margin is not None:
        keep &= scores <= cfg.margin * pos_score[:, None]
    pick = keep & (np.cumsum(keep, axis=1) <= cfg.num_negatives)
    return pick, rank[:, -1] >= cfg.range_max if k else np.zeros(b, bool)


def _mine_language(
    qrows: np.ndarray, pool: np.ndarray, qemb: np.ndarray, pemb: np.ndarray, facts: RowFacts,
    cfg: MiningConfig, n_langs: int, use_gpu: bool, progress: Callable[[int], None],
) -> tuple[np.ndarray, np.ndarray]:
    """``(negative rows int64 [n, num_negatives], scores)`` (-1 = none) for the queries ``qrows``.

    The first search asks for ``range_max`` plus room for the known exclusions (the positive, its
    parallel versions in ``all`` mode) and a little slack; queries that still lack ``range_max``
    eligible candidates (many duplicates) are searched again with twice the width, so the result
    is what an unbounded ranking would give.
    """
    n_pool, d = len(pool), pemb.shape[1]
    extra = 1 + (n_langs if cfg.langs_mode == "all" else 0) + 8
    k0 = min(n_pool, cfg.range_max + extra)
    block = max(1, min(4096, cfg.block_floats // max(1, k0 * d)))
    neg = np.full((len(qrows), cfg.num_negatives), -1, np.int64)
    neg_s = np.full((len(qrows), cfg.num_negatives), np.nan, np.float32)
    for b0 in range(0, len(qrows), block):
        sel = np.arange(b0, min(b0 + block, len(qrows)))
        k = k0
        while sel.size:
            rows = qrows[sel]
            q = np.asarray(qemb[rows], dtype=np.float32)
            pos = np.asarray(pemb[rows], dtype=np.float32)
            scores, ids = exact_search(q, pemb, k, rows=pool, use_gpu=use_gpu)
            pos_score = np.einsum("ij,ij->i", q, pos)
            cand = np.asarray(pemb[np.where(ids >= 0, ids, 0).ravel()], np.float32).reshape(*ids.shape, d)
            pos_sim = np.einsum("bkd,bd->bk", cand, pos)
            pick, complete = select_negatives(rows, scores, ids, pos_score, pos_sim, facts, cfg)
            done = complete | (k >= n_pool)
            for j in np.flatnonzero(done):
                got = np.flatnonzero(pick[j])
                neg[sel[j], : len(got)] = ids[j, got]
                neg_s[sel[j], : len(got)] = scores[j, got]
            sel = sel[~done]
            k = min(n_pool, 2 * k)  # rows that ran out of eligible candidates: search wider
        progress(min(b0 + block, len(qrows)))
    return neg, neg_s


# --------------------------------------------------------------------------- driver-level API
def _faiss_gpu() -> bool:
    import faiss

    return bool(getattr(faiss, "get_num_gpus", lambda: 0)() > 0)


def mine_table(
    table: pa.Table, model_dir: str | Path, work_dir: str | Path, cfg: MiningConfig,
    report: Report = lambda _: None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The pairs ``table`` with mined ``negatives`` (rows of other languages unchanged) + stats."""
    from hybrid_ray.index.build import model_fingerprint

    cfg.check()
    work = Path(work_dir)
    langs = sorted(pc.unique(table.column("lang")).to_pylist())
    wanted = list(cfg.langs) if cfg.langs else langs
    for lang in wanted:
        check_lang(lang, field="langs")
        if lang not in langs:
            raise ConfigError(f"language not in the data set (have {langs})", key="langs", value=lang)
    lang_col = table.column("lang").to_numpy(zero_copy_only=False)
    if cfg.langs_mode == "own" and set(wanted) != set(langs):
        # Only the mined languages' rows are candidates: encode and search just those.
        keep = np.flatnonzero(np.isin(lang_col, wanted))
        sub, stats = mine_table(table.take(pa.array(keep)), model_dir, work_dir, cfg, report)
        lists = table.column("negatives").to_pylist()
        for row, negs in zip(keep.tolist(), sub.column("negatives").to_pylist(), strict=True):
            lists[row] = negs
        col = pa.array(lists, pa.list_(pa.string()))
        return table.set_column(table.column_names.index("negatives"), "negatives", col), stats | {
            "rows": table.num_rows}
    pools = {lang: np.flatnonzero(lang_col == lang) for lang in langs}
    everything = np.arange(table.num_rows)
    for lang in wanted:
        n_pool = table.num_rows if cfg.langs_mode == "all" else len(pools[lang])
        if cfg.range_max > n_pool:
            raise ConfigError(f"larger than the candidate pool of language {lang!r} ({n_pool} passages, "
                              f"langs_mode={cfg.langs_mode})", key="range_max", value=cfg.range_max)
    model_sha = model_fingerprint(model_dir)
    work.mkdir(parents=True, exist_ok=True)
    pair, = _codes(table.column("pair_id"))
    qtext, ptext = _codes(normalize_texts(table.column("query")), normalize_texts(table.column("positive")))
    facts = RowFacts(pair=pair, query_text=qtext, positive_text=ptext)
    pemb = embed(model_dir, table.column("positive"), "passage", work / "passages.npy", cfg, model_sha, report)
    qemb = embed(model_dir, table.column("query"), "query", work / "queries.npy", cfg, model_sha, report)
    key = {"format": WORK_FORMAT, "model_sha256": model_sha, "table_rows": table.num_rows,
           "passages": json.loads((work / "passages.npy.json").read_text())["key"]["texts_sha256"],
           "queries": json.loads((work / "queries.npy.json").read_text())["key"]["texts_sha256"],
           **cfg.result_key()}
    use_gpu = _faiss_gpu()
    total = int(sum(len(pools[lang]) for lang in wanted))
    t0, base, last = time.perf_counter(), 0, [0.0]
    negs: dict[str, np.ndarray] = {}
    for lang in wanted:
        res, marker = work / f"lang-{lang}.npy", work / f"lang-{lang}.json"
        try:
            if json.loads(marker.read_text()).get("key") == key | {"lang": lang} and res.is_file():
                negs[lang] = np.load(res)
                report(f"mine: {lang}: already mined ({len(pools[lang])} rows), skipped")
                base += len(pools[lang])
                continue
        except (OSError, ValueError):
            pass
        marker.unlink(missing_ok=True)
        pool = everything if cfg.langs_mode == "all" else pools[lang]

        def progress(done: int, lang: str = lang, base: int = base) -> None:
            last[0] = _progress(report, f"{lang}", base + done, total, t0, last[0])

        neg, _ = _mine_language(pools[lang], pool, qemb, pemb, facts, cfg, len(langs), use_gpu, progress)
        with atomic_path(res) as tmp, open(tmp, "wb") as f:
            np.save(f, neg, allow_pickle=False)
        write_json_atomic(marker, {"key": key | {"lang": lang}})  # the finished marker: written last
        negs[lang] = neg
        base += len(pools[lang])
    return _assemble(table, pools, negs, cfg, time.perf_counter() - t0)


def _assemble(table: pa.Table, pools: dict[str, np.ndarray], negs: dict[str, np.ndarray], cfg: MiningConfig,
              seconds: float) -> tuple[pa.Table, dict[str, Any]]:
    """Put the mined negatives (row ids -> positive texts) into the table's ``negatives`` column."""
    lists: list[Any] = table.column("negatives").to_pylist()
    positives = table.column("positive")
    counts: list[int] = []
    per_lang: dict[str, Any] = {}
    for lang, neg in negs.items():
        got = (neg >= 0).sum(axis=1)
        texts = positives.take(pa.array(neg[neg >= 0])).to_pylist()
        at = 0
        for row, g in zip(pools[lang].tolist(), got.tolist(), strict=True):
            lists[row], at = texts[at : at + g], at + g
        counts += got.tolist()
        per_lang[lang] = {"rows": len(got), "negatives": int(got.sum()),
                          "short": int((got < cfg.num_negatives).sum())}
    col = pa.array(lists, pa.list_(pa.string()))
    out = table.set_column(table.column_names.index("negatives"), "negatives", col)
    c = np.asarray(counts, dtype=np.int64)
    hist = np.bincount(c, minlength=cfg.num_negatives + 1) if c.size else np.zeros(1, np.int64)
    stats = {"rows": table.num_rows, "rows_mined": int(c.size), "requested": cfg.num_negatives,
             "negatives_per_row": {"mean": round(float(c.mean()), 4) if c.size else 0.0,
                                   "min": int(c.min()) if c.size else 0, "max": int(c.max(initial=0)),
                                   "histogram": {str(i): int(v) for i, v in enumerate(hist.tolist())}},
             "rows_short": int((c < cfg.num_negatives).sum()), "langs": per_lang,
             "params": cfg.result_key(), "mining_seconds": round(seconds, 3)}
    return out, stats


def mine_dataset(
    data: str | Path, out: str | Path, model_dir: str | Path, cfg: MiningConfig, *,
    split: str = "train", work_dir: str | Path | None = None, report: Report = lambda _: None,
) -> dict[str, Any]:
    """Mine ``split`` of the pairs data set ``data`` and write the result to ``out``, atomically.

    A data-set directory gives a directory: the mined split, every other split and ``meta.json``
    copied byte for byte, and ``mining.json`` (the stats). A single file gives a single file
    (Parquet or JSONL by ``out``'s suffix). ``work_dir`` defaults to ``<out>.mine-work``.
    """
    data, out = Path(data), Path(out)
    if not Path(model_dir).is_dir():
        raise ConfigError("model directory does not exist", key="model_dir", value=str(model_dir))
    if data.resolve() == out.resolve():
        raise ConfigError("must differ from the input data set", key="out", value=str(out))
    table = read_pairs(data, split if data.is_dir() else None)
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".mine-work")
    t0 = time.perf_counter()
    mined, stats = mine_table(table, model_dir, work, cfg, report)
    stats = {"data": str(data), "split": split if data.is_dir() else None, "model_dir": str(model_dir),
             **stats, "seconds": round(time.perf_counter() - t0, 3)}
    if data.is_dir():
        with atomic_dir(out) as tmp:
            write_pairs(mined, tmp / f"{split}.parquet")
            for other in list_splits(data):
                if other != split:
                    shutil.copy2(data / f"{other}.parquet", tmp / f"{other}.parquet")
            if (data / "meta.json").is_file():
                shutil.copy2(data / "meta.json", tmp / "meta.json")
            write_json_atomic(tmp / "mining.json", stats)
    else:
        write_pairs(mined, out)
    return stats


__all__ = ["MiningConfig", "RowFacts", "embed", "mine_dataset", "mine_table", "normalize_texts", "select_negatives"]
