"""Read and write MIRACL-format retrieval sets.

Files (found anywhere under the root, so both the official nested layout
``miracl-v1.0-{lang}/topics/...`` and the flat layout written by :func:`write_miracl` work):

- topics  ``topics.miracl-v1.0-{lang}-{split}.tsv``   ``qid<TAB>query``
- qrels   ``qrels.miracl-v1.0-{lang}-{split}.tsv``    TREC ``qid Q0 docid relevance``
- corpus  ``miracl-corpus-v1.0-{lang}/docs-*.jsonl.gz``  ``{"docid", "title", "text"}``

A candidate's text is ``title + " " + text`` (just ``text`` when the title is empty), the usual
MIRACL convention (Pyserini / Tevatron encode both). MIRACL ids are only unique within one
language (Wikipedia page ids of different wikis collide), so loaded ids are suffixed with the
language, ``f"{id}/{lang}"``, like ``RetrievalSet.from_pairs``; qrels keep every judgement,
including relevance-0 ones (nDCG needs them).
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from hybrid_ray.data.formats import DataFormat, register_format
from hybrid_ray.data.pairs import iter_jsonl, iter_tsv, read_jsonl
from hybrid_ray.data.retrieval import QUERIES_SCHEMA, RetrievalSet
from hybrid_ray.data.schema import check_lang, first_blank_row
from hybrid_ray.data.streaming import StreamedRetrieval
from hybrid_ray.errors import DataError
from hybrid_ray.io import atomic_path

#: Bytes of JSON per table when a corpus file is streamed (:func:`iter_corpus_file`).
CORPUS_BLOCK_BYTES = 8 << 20
CORPUS_JSONL_SCHEMA = pa.schema([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])


def topics_name(lang: str, split: str) -> str:
    return f"topics.miracl-v1.0-{lang}-{split}.tsv"


def qrels_name(lang: str, split: str) -> str:
    return f"qrels.miracl-v1.0-{lang}-{split}.tsv"


def corpus_dir_name(lang: str) -> str:
    return f"miracl-corpus-v1.0-{lang}"


def _find_one(root: Path, name: str, *, is_dir: bool = False) -> Path:
    hits = sorted(p for p in root.rglob(name) if (p.is_dir() if is_dir else p.is_file()))
    if not hits:
        raise DataError(f"no {name} under this directory", path=root)
    if len(hits) > 1:
        raise DataError(f"{len(hits)} copies of {name}: {[str(h) for h in hits[:3]]}", path=root)
    return hits[0]


def miracl_langs(root: str | Path, split: str = "dev") -> list[str]:
    """Languages that have a topics file for ``split`` under ``root``."""
    prefix, suffix = "topics.miracl-v1.0-", f"-{split}.tsv"
    langs = []
    for p in Path(root).rglob(f"{prefix}*{suffix}"):
        langs.append(check_lang(p.name[len(prefix) : -len(suffix)], path=p, field="file name"))
    return sorted(set(langs))


def miracl_splits(root: str | Path) -> list[str]:
    """Splits that have at least one topics file under ``root``."""
    splits = {p.name.rsplit("-", 1)[-1][: -len(".tsv")] for p in Path(root).rglob("topics.miracl-v1.0-*.tsv")}
    return sorted(splits)


def read_topics(path: Path) -> dict[str, str]:
    """``{qid: query}`` from a ``qid<TAB>query`` file; malformed lines name file and line."""
    topics: dict[str, str] = {}
    for lineno, parts, line in iter_tsv(
        path, 2, message="malformed topics line: expected 'qid<TAB>query', got {n} field(s)"
    ):
        qid, query = parts[0].strip(), parts[1].strip()
        if not qid or not query:
            raise DataError("empty query id or text", path=path, line=lineno, value=line)
        if qid in topics:
            raise DataError("duplicate query id", path=path, line=lineno, field="qid", value=qid)
        topics[qid] = query
    return topics


def read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """TREC qrels ``qid Q0 docid rel`` -> ``({qid: {docid: rel}}, {docid: first line})``."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    first_line: dict[str, int] = {}
    for lineno, parts, _ in iter_tsv(
        path, 4, sep=None, message="malformed qrels line: expected 'qid Q0 docid relevance', got {n} field(s)"
    ):
        qid, _, docid, rel = parts
        try:
            qrels[qid][docid] = int(rel)
        except ValueError:
            raise DataError(
                "relevance is not an integer", path=path, line=lineno, field="relevance", value=rel
            ) from None
        first_line.setdefault(docid, lineno)
    return dict(qrels), first_line


def corpus_files(directory: Path) -> list[Path]:
    """The ``docs-*.jsonl(.gz)`` files of a corpus directory (DataError when there are none)."""
    files = sorted(directory.glob("docs-*.jsonl.gz")) + sorted(directory.glob("docs-*.jsonl"))
    if not files:
        raise DataError("corpus directory holds no docs-*.jsonl.gz files", path=directory)
    return files


def iter_corpus_file(path: Path, block_bytes: int | None = None) -> Iterator[pa.Table]:
    """One corpus file as ``(docid, title, text)`` tables of about ``block_bytes`` of JSON each
    (default :data:`CORPUS_BLOCK_BYTES`).

    Streamed with pyarrow's JSON reader; a file it cannot read (bad JSON, a missing docid or
    text, a non-string field) is read once more line by line so the DataError names the line
    (rows already yielded are not yielded again). Every table is checked for blank docids/texts.
    """
    done = 0
    try:
        opts = pj.ParseOptions(explicit_schema=CORPUS_JSONL_SCHEMA, unexpected_field_behavior="ignore")
        read = pj.ReadOptions(block_size=block_bytes or CORPUS_BLOCK_BYTES)
        reader = pj.open_json(path, read_options=read, parse_options=opts)
        for batch in reader:
            t = pa.Table.from_batches([batch]).select(CORPUS_JSONL_SCHEMA.names).cast(CORPUS_JSONL_SCHEMA)
            if t.column("docid").null_count or t.column("text").null_count:
                raise pa.ArrowInvalid("missing or null docid / text")
            _check_corpus_text(t, path, offset=done)
            done += t.num_rows
            yield t
        return
    except pa.ArrowInvalid as exc:
        if "Empty JSON file" in str(exc):
            return
    t = read_jsonl(path, CORPUS_JSONL_SCHEMA, required=("docid", "text"), slow_only=True)
    t = t.select(CORPUS_JSONL_SCHEMA.names).cast(CORPUS_JSONL_SCHEMA)
    _check_corpus_text(t, path)
    if t.num_rows > done:
        yield t.slice(done)


def read_corpus(directory: Path) -> pa.Table:
    """All ``docs-*.jsonl(.gz)`` of a corpus directory as a ``(docid, title, text)`` table."""
    tables = [t for f in corpus_files(directory) for t in iter_corpus_file(f)]
    return pa.concat_tables(tables) if tables else CORPUS_JSONL_SCHEMA.empty_table()


def _check_corpus_text(table: pa.Table, path: Path, offset: int = 0) -> None:
    """An empty or whitespace-only ``docid`` or ``text`` is a DataError naming file, line and docid.

    ``text`` is the passage itself (the title only prefixes it), so a document whose text is
    blank is rejected even when it has a title, exactly like one whose text is missing or null.
    The check is vectorised; the file is re-scanned only to find the failing line. ``offset``:
    the file row of the table's first row (a streamed table is one block of the file).
    """
    for name in ("docid", "text"):
        row = first_blank_row(table.column(name))
        if row is None:
            continue
        docid = table.column("docid")[row].as_py()
        line = next((lineno for i, (lineno, _) in enumerate(iter_jsonl(path)) if i == offset + row), None)
        raise DataError(
            f"empty or whitespace-only {name} (docid {docid!r})",
            path=path, line=line, field=name, value=table.column(name)[row].as_py(),
        )


def _candidate_text(title: pa.ChunkedArray, text: pa.ChunkedArray) -> pa.ChunkedArray:
    """``title + " " + text``, or ``text`` alone where the title is empty or missing."""
    title = pc.utf8_trim_whitespace(pc.fill_null(title, ""))
    text = pc.utf8_trim_whitespace(text)
    joined = pc.binary_join_element_wise(title, text, " ")
    return pc.if_else(pc.equal(pc.utf8_length(title), 0), text, joined)


def stream_miracl(
    root: str | Path,
    langs: list[str] | str | None = None,
    split: str = "dev",
    *,
    judged_only: bool = False,
    name: str | None = None,
) -> StreamedRetrieval:
    """MIRACL ``split`` of ``langs`` with the corpus as a stream of tables (bounded memory).

    Topics and qrels (small) are read and cross-checked up front; the corpus is read one block at
    a time when the result's ``corpus`` iterator is consumed, keeping only the docids, for the
    checks that need all of them (a duplicate docid, a judged document absent from the corpus),
    which run at the end of each language's corpus. Errors as :func:`load_miracl`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a MIRACL directory", path=root)
    if isinstance(langs, str):
        langs = [langs]
    langs = list(langs) if langs is not None else miracl_langs(root, split)
    if not langs:
        raise DataError(f"no topics.miracl-v1.0-{{lang}}-{split}.tsv files", path=root)
    q_ids, q_langs, q_texts = [], [], []
    qrels_all: dict[str, dict[str, int]] = {}
    per_lang = []
    for lang in langs:
        check_lang(lang, path=root)
        topics_path = _find_one(root, topics_name(lang, split))
        qrels_path = _find_one(root, qrels_name(lang, split))
        topics = read_topics(topics_path)
        qrels, first_line = read_qrels(qrels_path)
        for qid in topics:
            if not qrels.get(qid):
                raise DataError(
                    f"topic has no qrels in {qrels_path}", path=topics_path, field="qid", value=qid
                )
        corpus_dir = _find_one(root, corpus_dir_name(lang), is_dir=True)
        judged = sorted({d for q in topics for d in qrels[q]})
        per_lang.append((lang, corpus_dir, qrels_path, first_line, judged))
        suffix = f"/{lang}"
        for qid, text in topics.items():
            key = qid + suffix
            q_ids.append(key)
            q_langs.append(lang)
            q_texts.append(text)
            qrels_all[key] = {d + suffix: r for d, r in qrels[qid].items()}

    def corpus() -> Iterator[pa.Table]:
        for lang, corpus_dir, qrels_path, first_line, judged in per_lang:
            judged_arr = pa.array(judged, pa.string())
            ids: list[pa.ChunkedArray] = []
            suffix = pa.scalar(f"/{lang}")
            for f in corpus_files(corpus_dir):
                for t in iter_corpus_file(f):
                    ids.append(t.column("docid"))
                    if judged_only:
                        t = t.filter(pc.is_in(t.column("docid"), value_set=judged_arr))
                    yield pa.table({
                        "docid": pc.binary_join_element_wise(t.column("docid"), suffix, ""),
                        "lang": pa.array([lang] * t.num_rows, pa.string()),
                        "text": _candidate_text(t.column("title"), t.column("text")),
                    })
            docids = pa.chunked_array([c for col in ids for c in col.chunks], pa.string())
            if pc.count_distinct(docids).as_py() != len(docids):
                counts = pc.value_counts(docids)
                dup = next(v["values"].as_py() for v in counts if v["counts"].as_py() > 1)
                raise DataError("duplicate docid in the corpus", path=root / corpus_dir_name(lang), value=dup)
            present = pc.is_in(judged_arr, value_set=docids)
            if not pc.all(present).as_py():
                missing = judged[pc.index(present, False).as_py()]
                raise DataError(
                    f"qrels name a document absent from the corpus {corpus_dir_name(lang)}",
                    path=qrels_path, line=first_line[missing], field="docid", value=missing,
                )

    queries = pa.table({"qid": q_ids, "lang": q_langs, "text": q_texts}, schema=QUERIES_SCHEMA)
    return StreamedRetrieval(name=name or f"miracl-{split}", queries=queries, corpus=corpus(),
                             qrels=lambda: qrels_all)


def load_miracl(
    root: str | Path,
    langs: list[str] | str | None = None,
    split: str = "dev",
    *,
    judged_only: bool = False,
    name: str | None = None,
) -> RetrievalSet:
    """Load one or several MIRACL languages of ``split`` into one :class:`RetrievalSet`.

    ``judged_only`` keeps only the judged documents of the corpus (a small re-ranking pool for
    smoke tests; the full corpus is the real benchmark). Raises DataError for malformed TSV lines,
    a topic without qrels, qrels naming a document absent from the corpus and bad corpus JSON.
    ``data convert`` streams the same thing (:func:`stream_miracl`) instead of loading it.
    """
    return stream_miracl(root, langs, split, judged_only=judged_only, name=name).to_retrieval_set()


def _gzip_writer(raw: BinaryIO) -> gzip.GzipFile:
    """gzip without a file name or timestamp in the header: same data, same bytes."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)


def _tsv_field(value: str) -> str:
    """Collapse whitespace: a tab or newline inside a field would break the TSV line format."""
    return " ".join(str(value).split())


def write_miracl(
    root: str | Path,
    lang: str,
    split: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    corpus: Iterable[Mapping[str, str]],
) -> dict[str, Path]:
    """Write one language/split in MIRACL format (flat layout under ``root``), each file atomic.

    ``queries`` maps qid -> text, ``qrels`` qid -> {docid: relevance}, ``corpus`` yields dicts
    with ``docid``, ``text`` and optional ``title``. Whitespace inside TSV fields is collapsed.
    The corpus goes to ``miracl-corpus-v1.0-{lang}/docs-0.jsonl.gz`` (gzip mtime 0, so
    rebuilding the same data gives byte-identical files).
    """
    check_lang(lang)
    root = Path(root)
    paths = {
        "topics": root / topics_name(lang, split),
        "qrels": root / qrels_name(lang, split),
        "corpus": root / corpus_dir_name(lang) / "docs-0.jsonl.gz",
    }
    with atomic_path(paths["topics"]) as tmp:
        tmp.write_text(
            "".join(f"{_tsv_field(q)}\t{_tsv_field(t)}\n" for q, t in queries.items()), encoding="utf-8"
        )
    with atomic_path(paths["qrels"]) as tmp:
        tmp.write_text(
            "".join(f"{q}\tQ0\t{d}\t{int(r)}\n" for q, rel in qrels.items() for d, r in rel.items()),
            encoding="utf-8",
        )
    with atomic_path(paths["corpus"]) as tmp, open(tmp, "wb") as raw, _gzip_writer(raw) as f:
        for doc in corpus:
            row = {"docid": doc["docid"], "title": doc.get("title", ""), "text": doc["text"]}
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    return paths


def _is_miracl(path: Path) -> bool:
    return path.is_dir() and next(path.rglob("topics.miracl-v1.0-*.tsv"), None) is not None


register_format(DataFormat(
    name="miracl",
    label="MIRACL",
    description="MIRACL topics / qrels / corpus (monolingual retrieval per language; evaluation only)",
    kind="retrieval",
    detect=_is_miracl,
    load_retrieval=lambda path, split, langs: load_miracl(path, langs=langs, split=split or "dev"),
    convert=lambda path, opts: load_miracl(path, opts.langs, split=opts.split or "dev",
                                           judged_only=opts.judged_only),
    convert_stream=lambda path, opts: stream_miracl(path, opts.langs, split=opts.split or "dev",
                                                    judged_only=opts.judged_only),
    splits=lambda path: {s: s for s in miracl_splits(path)},
    priority=30,  # after pairs: a pairs data set may carry its dev split in MIRACL format in a subfolder
))
