"""Read BEIR-format retrieval sets (evaluation only): ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``.

Layout (the one the ``beir`` package and most BEIR-style multilingual releases use):

- ``corpus.jsonl`` (or ``.jsonl.gz``): ``{"_id", "title", "text"}`` (optional ``lang``);
- ``queries.jsonl`` (or ``.jsonl.gz``): ``{"_id", "text"}`` (optional ``lang``); it may hold the
  queries of every split: only those the split's qrels judge are evaluated, as BEIR does;
- ``qrels/{split}.tsv``: header ``query-id<TAB>corpus-id<TAB>score``, then one judgement per line.

A candidate's text is ``title + " " + text`` (``text`` when the title is empty), as BEIR encodes it.

Language, first match wins: a ``lang`` field on the row; ``"lang"`` (or ``"language"``) in the
directory's ``meta.json``; the name of the directory when the data set is a directory of
per-language BEIR sets (``root/de/corpus.jsonl``, ``root/fr/...``); else the option (``--langs X``
naming exactly one language). Nothing at all is a DataError saying where a language can come from.
With several language sub-directories, ids get a ``/{lang}`` suffix like MIRACL's (ids of
separate sets collide); a single set keeps its ids, so our run files line up with its own qrels.

Bad rows (invalid JSON, a missing ``_id`` or ``text``, a duplicate ``_id``, a qrels line without three
fields or with a non-integer score, a qrels id absent from the corpus / queries) raise a DataError
naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from hybrid_ray.data.formats import DataFormat, register_format
from hybrid_ray.data.pairs import iter_jsonl, iter_tsv, read_meta
from hybrid_ray.data.retrieval import CORPUS_SCHEMA, QUERIES_SCHEMA, RetrievalSet
from hybrid_ray.data.schema import check_lang
from hybrid_ray.data.streaming import StreamedRetrieval
from hybrid_ray.errors import DataError

QRELS_HEADER = ("query-id", "corpus-id", "score")
#: Corpus rows per table when a BEIR corpus is streamed (:func:`stream_beir`).
BATCH_ROWS = 50_000
DEFAULT_SPLIT = "test"


def _file(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _is_set(path: Path) -> bool:
    return path.is_dir() and _file(path, "corpus") is not None and _file(path, "queries") is not None \
        and (path / "qrels").is_dir()


def beir_sets(root: Path) -> dict[str | None, Path]:
    """``{None: root}`` for one BEIR set, ``{lang: root/lang}`` for a directory of per-language sets."""
    if _is_set(root):
        return {None: root}
    subs = {p.name: p for p in sorted(root.iterdir()) if _is_set(p)} if root.is_dir() else {}
    if not subs:
        raise DataError("not a BEIR data set (corpus.jsonl, queries.jsonl, qrels/) or a directory of them",
                        path=root)
    return {check_lang(name, path=p, field="directory name"): p for name, p in subs.items()}


def beir_splits(root: Path) -> list[str]:
    """Splits with a ``qrels/{split}.tsv`` in any of the sets under ``root``."""
    return sorted({p.stem for s in beir_sets(root).values() for p in (s / "qrels").glob("*.tsv")})


def _iter_rows(path: Path, *, title: bool, default_lang: str | None) -> Iterator[tuple[int, str, str, str]]:
    """``(line, _id, lang, text)`` per row; every problem names the file and line (duplicates: the caller)."""
    for lineno, obj in iter_jsonl(path):
        _id, text = obj.get("_id"), obj.get("text")
        if not isinstance(_id, (str, int)) or str(_id).strip() == "":
            raise DataError("missing or empty '_id'", path=path, line=lineno, field="_id", value=_id)
        _id = str(_id)
        head = str(obj.get("title") or "") if title else ""
        if not isinstance(text, str) or not (text.strip() or str(head).strip()):
            raise DataError("missing or empty 'text'", path=path, line=lineno, field="text", value=text)
        lang = obj.get("lang", default_lang)
        if lang is None:
            raise DataError("no language: add a 'lang' field, a meta.json {\"lang\": ...}, per-language "
                            "directories, or name one language (--langs XX)", path=path, line=lineno)
        lang = check_lang(lang, path=path, field="lang", line=lineno)
        yield lineno, _id, lang, (f"{head} {text}".strip() if head else text)


def _read_rows(path: Path, *, title: bool, default_lang: str | None) -> dict[str, tuple[str, str]]:
    """``{_id: (lang, text)}``; every problem names the file and line."""
    rows: dict[str, tuple[str, str]] = {}
    for lineno, _id, lang, text in _iter_rows(path, title=title, default_lang=default_lang):
        if _id in rows:
            raise DataError("duplicate '_id'", path=path, line=lineno, field="_id", value=_id)
        rows[_id] = (lang, text)
    return rows


def read_qrels_tsv(path: Path) -> dict[str, dict[str, int]]:
    """``{query-id: {corpus-id: score}}`` from a BEIR qrels TSV (header required)."""
    qrels: dict[str, dict[str, int]] = {}
    for lineno, parts, _ in iter_tsv(path, 3, header=QRELS_HEADER):
        try:
            score = int(parts[2])
        except ValueError:
            raise DataError("score is not an integer", path=path, line=lineno, field="score",
                            value=parts[2]) from None
        qrels.setdefault(parts[0].strip(), {})[parts[1].strip()] = score
    return qrels


def _qrels_lines(path: Path) -> dict[tuple[str, str], int]:
    """First line of each (query-id, corpus-id) judgement, for errors about missing ids."""
    where: dict[tuple[str, str], int] = {}
    for lineno, parts, _ in iter_tsv(path, 3, header=QRELS_HEADER):
        where.setdefault((parts[0].strip(), parts[1].strip()), lineno)
    return where


def _split_file(root: Path, split: str | None) -> Path:
    qdir = root / "qrels"
    if split is None:
        present = sorted(p.stem for p in qdir.glob("*.tsv"))
        split = DEFAULT_SPLIT if DEFAULT_SPLIT in present else present[0] if len(present) == 1 else None
        if split is None:
            raise DataError(f"no qrels/{DEFAULT_SPLIT}.tsv; pick a split ({', '.join(present) or 'none'}) with "
                            "--split", path=qdir)
    path = qdir / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"no qrels for split {split!r}", path=path)
    return path


def stream_beir(root: str | Path, split: str | None = None, langs: list[str] | None = None,
                batch_rows: int | None = None) -> StreamedRetrieval:
    """A BEIR set (or a directory of per-language ones) with the corpus as a stream of tables.

    Queries and qrels (small) are read up front; the corpus is read row by row as the result's
    ``corpus`` iterator is consumed, ``batch_rows`` rows per table (default :data:`BATCH_ROWS`),
    keeping only the ids (for the duplicate check and the qrels cross-check at the end of each set's corpus). Errors as
    :func:`load_beir`.
    """
    root = Path(root)
    sets = beir_sets(root)
    option = langs[0] if langs is not None and len(langs) == 1 else None
    keep = set(langs) if langs else None
    q_ids, q_langs, q_texts = [], [], []
    qrels_all: dict[str, dict[str, int]] = {}
    plans = []
    qrels_path = None
    for dir_lang, path in sets.items():
        meta = read_meta(path)
        default = meta.get("lang") or meta.get("language") or dir_lang or option
        corpus_path, queries_path = _file(path, "corpus"), _file(path, "queries")
        assert corpus_path is not None and queries_path is not None  # beir_sets checked
        if default is None:  # a corpus without any language fails on its first row, before the queries
            next(_iter_rows(corpus_path, title=True, default_lang=None), None)
        queries = _read_rows(queries_path, title=False, default_lang=default)
        qrels_path = _split_file(path, split)
        qrels = read_qrels_tsv(qrels_path)
        plans.append((dir_lang, corpus_path, default, qrels_path, qrels))
        suffix = f"/{dir_lang}" if dir_lang is not None else ""
        for qid in qrels:  # only the split's queries, in qrels order
            if qid not in queries:
                where = _qrels_lines(qrels_path)
                docid = next(iter(qrels[qid]), "")
                raise DataError("query-id not in queries", path=qrels_path, line=where.get((qid, docid)),
                                field="query-id", value=qid)
            lang, text = queries[qid]
            if keep is not None and lang not in keep:
                continue
            q_ids.append(qid + suffix)
            q_langs.append(lang)
            q_texts.append(text)
            qrels_all[qid + suffix] = {d + suffix: r for d, r in qrels[qid].items()}
    kept_docs: set[str] = set()
    batch_rows = batch_rows or BATCH_ROWS

    def corpus() -> Iterator[pa.Table]:
        for dir_lang, corpus_path, default, qrels_path, qrels in plans:
            suffix = f"/{dir_lang}" if dir_lang is not None else ""
            ids: set[str] = set()
            cols: tuple[list[str], list[str], list[str]] = ([], [], [])
            for lineno, _id, lang, text in _iter_rows(corpus_path, title=True, default_lang=default):
                if _id in ids:
                    raise DataError("duplicate '_id'", path=corpus_path, line=lineno, field="_id", value=_id)
                ids.add(_id)
                if keep is not None and lang not in keep:
                    continue
                kept_docs.add(_id + suffix)
                for col, v in zip(cols, (_id + suffix, lang, text), strict=True):
                    col.append(v)
                if len(cols[0]) >= batch_rows:
                    yield pa.table(dict(zip(("docid", "lang", "text"), cols, strict=True)), schema=CORPUS_SCHEMA)
                    cols = ([], [], [])
            if cols[0]:
                yield pa.table(dict(zip(("docid", "lang", "text"), cols, strict=True)), schema=CORPUS_SCHEMA)
            for qid, rel in qrels.items():
                for docid in rel:
                    if docid not in ids:
                        raise DataError("corpus-id not in corpus", path=qrels_path,
                                        line=_qrels_lines(qrels_path).get((qid, docid)), field="corpus-id",
                                        value=docid)

    def final_qrels() -> dict[str, dict[str, int]]:
        if keep is None:
            return qrels_all
        return {q: {d: r for d, r in rel.items() if d in kept_docs} for q, rel in qrels_all.items()}

    assert qrels_path is not None  # beir_sets returned at least one set
    return StreamedRetrieval(
        name=f"beir-{root.name}-{qrels_path.stem}",
        queries=pa.table({"qid": q_ids, "lang": q_langs, "text": q_texts}, schema=QUERIES_SCHEMA),
        corpus=corpus(), qrels=final_qrels,
    )


def load_beir(root: str | Path, split: str | None = None, langs: list[str] | None = None) -> RetrievalSet:
    """A BEIR set (or a directory of per-language ones) as a :class:`RetrievalSet` (see the module docstring).

    ``data convert`` streams the same thing (:func:`stream_beir`) instead of loading it.
    """
    return stream_beir(root, split, langs).to_retrieval_set()


def _detect(path: Path) -> bool:
    if _is_set(path):
        return True
    return path.is_dir() and any(_is_set(p) for p in path.iterdir() if p.is_dir())


register_format(DataFormat(
    name="beir",
    label="BEIR",
    description="BEIR corpus.jsonl / queries.jsonl / qrels/{split}.tsv (one set or one per language; evaluation only)",
    kind="retrieval",
    detect=_detect,
    load_retrieval=load_beir,
    convert=lambda path, opts: load_beir(path, opts.split, opts.langs),
    convert_stream=lambda path, opts: stream_beir(path, opts.split, opts.langs),
    splits=lambda path: {s: s for s in beir_splits(path)},
    priority=25,  # after pairs and retrieval dirs (Parquet), before MIRACL (topics files)
))
