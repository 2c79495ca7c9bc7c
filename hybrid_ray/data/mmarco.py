"""Load mMARCO (multilingual MS MARCO) training triples into the long pairs layout.

Layout under the root::

    collections/{language}_collection.tsv                doc_id<TAB>passage
    queries/{split}/{language}_queries.{split}.tsv        qid<TAB>query
    triples.train.ids.small.tsv                           qid<TAB>pos_id<TAB>neg_id

mMARCO names languages in full ("english", "german", ...); they are mapped to ISO 639-1 codes.
Ids are shared across languages (the collections are translations of one another), which is
exactly what makes the output parallel: ``pair_id = f"{qid}-{pos_id}"`` is the same pair in every
language. Triples sharing a (qid, pos_id) become one pair whose negatives are the first
``negatives_per_pair`` negatives of those triples.

The files are large (8.8M passages, ~3 GB per language; 40M triples), so they are streamed with
pyarrow's CSV reader and only the rows the selected triples need are kept; ``data convert``
writes one language at a time (:func:`iter_mmarco`, :mod:`hybrid_ray.data.streaming`), so the
whole multi-language table is never in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from hybrid_ray.data.formats import DataFormat, register_format
from hybrid_ray.data.pairs import iter_tsv
from hybrid_ray.data.schema import PAIRS_SCHEMA, check_lang, first_null_row, validate_pairs_table
from hybrid_ray.errors import DataError

#: mMARCO language names (as used in its file names) -> ISO 639-1.
MMARCO_LANGUAGES: dict[str, str] = {
    "arabic": "ar", "chinese": "zh", "dutch": "nl", "english": "en", "french": "fr",
    "german": "de", "hindi": "hi", "indonesian": "id", "italian": "it", "japanese": "ja",
    "portuguese": "pt", "russian": "ru", "spanish": "es", "vietnamese": "vi",
}
ISO_TO_MMARCO = {code: name for name, code in MMARCO_LANGUAGES.items()}
#: Pairs per table that :func:`iter_mmarco` yields (each language in one or more such tables).
PAIRS_CHUNK = 100_000
TRIPLES_FILE = "triples.train.ids.small.tsv"


def mmarco_name(lang: str) -> str:
    """The mMARCO file-name language for an ISO code (or an mMARCO name, passed through)."""
    if lang in MMARCO_LANGUAGES:
        return lang
    if lang in ISO_TO_MMARCO:
        return ISO_TO_MMARCO[lang]
    raise DataError(
        f"language not in mMARCO (codes: {sorted(ISO_TO_MMARCO)})", field="lang", value=lang
    )


def mmarco_langs(root: str | Path) -> list[str]:
    """ISO codes of the languages that have a collection file under ``root``."""
    codes = []
    for p in sorted((Path(root) / "collections").glob("*_collection.tsv")):
        name = p.name[: -len("_collection.tsv")]
        if name not in MMARCO_LANGUAGES:
            raise DataError(
                f"unknown mMARCO language name (known: {sorted(MMARCO_LANGUAGES)})",
                path=p, field="file name", value=name,
            )
        codes.append(MMARCO_LANGUAGES[name])
    return sorted(codes)


def _first_bad_line(path: Path, n_fields: int) -> tuple[int, str] | None:
    try:
        for _ in iter_tsv(path, n_fields, skip_whitespace=False):
            pass
    except DataError as exc:
        return exc.line, exc.value
    return None


def _stream_tsv(path: Path, columns: list[str]):
    """Record batches of an all-string TSV without quoting (passages contain quote marks)."""
    if not path.is_file():
        raise DataError("missing mMARCO file", path=path)
    read = pcsv.ReadOptions(column_names=columns, block_size=16 << 20)
    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False)
    convert = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in columns}, strings_can_be_null=False
    )
    try:
        reader = pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        yield from reader
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return
        bad = _first_bad_line(path, len(columns))
        if bad is not None:
            raise DataError(
                f"malformed line: expected {len(columns)} tab-separated fields ({', '.join(columns)})",
                path=path, line=bad[0], value=bad[1],
            ) from None
        raise DataError(f"cannot parse TSV: {exc}", path=path) from None


def read_triples(root: str | Path, max_triples: int | None = None) -> pa.Table:
    """The first ``max_triples`` (all when None) rows of the id triples file."""
    path = Path(root) / TRIPLES_FILE
    batches, n = [], 0
    for batch in _stream_tsv(path, ["qid", "pos_id", "neg_id"]):
        if max_triples is not None and n + batch.num_rows >= max_triples:
            batches.append(batch.slice(0, max_triples - n))
            n = max_triples
            break
        batches.append(batch)
        n += batch.num_rows
    schema = pa.schema([(c, pa.string()) for c in ("qid", "pos_id", "neg_id")])
    table = pa.Table.from_batches(batches, schema=schema)
    if not table.num_rows:
        raise DataError("no triples", path=path)
    return table


def _lookup_index(path: Path, ids: pa.Array, what: str) -> tuple[pa.Array, pa.Array]:
    """``(row, texts)``: the distinct texts ``ids`` use, from an ``id<TAB>text`` file streamed once,
    and for each id its row in ``texts`` (``pc.take(texts, row)`` = the texts in ``ids`` order).

    Memory holds each used text once, however many ids repeat it. Raises DataError naming the
    file and the first id it lacks, or whose text is empty.
    """
    wanted = pc.unique(ids)
    found_ids, found_texts = [], []
    for batch in _stream_tsv(path, ["id", "text"]):
        mask = pc.is_in(batch.column(0), value_set=wanted)
        if pc.any(mask).as_py():
            found_ids.append(pc.filter(batch.column(0), mask))
            found_texts.append(pc.filter(batch.column(1), mask))
    have = pa.concat_arrays(found_ids) if found_ids else pa.array([], pa.string())
    texts = pa.concat_arrays(found_texts) if found_texts else pa.array([], pa.string())
    del found_ids, found_texts
    idx = pc.index_in(ids, value_set=have)
    row = first_null_row(idx)
    if row is not None:
        missing = ids[row].as_py()
        raise DataError(f"{what} id used by a triple is missing from this file", path=path, value=missing)
    texts = pc.utf8_trim_whitespace(texts)
    empty = pc.take(pc.equal(pc.utf8_length(texts), 0), idx)
    if pc.any(empty).as_py():
        bad = ids[pc.index(empty, True).as_py()].as_py()
        raise DataError(f"empty {what} text", path=path, field="text", value=bad)
    return idx, texts


def _lookup(path: Path, ids: pa.Array, what: str) -> pa.Array:
    """Texts for ``ids`` (in order) from an ``id<TAB>text`` file, streaming it once (see :func:`_lookup_index`)."""
    idx, texts = _lookup_index(path, ids, what)
    return pc.take(texts, idx)


def iter_mmarco(
    root: str | Path,
    langs: list[str] | None = None,
    *,
    split: str = "train",
    max_triples: int | None = None,
    negatives_per_pair: int = 1,
) -> Iterator[pa.Table]:
    """mMARCO triples as validated long-layout pairs tables, language by language, in chunks of
    :data:`PAIRS_CHUNK` pairs (bounded memory).

    What ``data convert`` writes, chunk by chunk: memory holds the triples' ids, one language's
    distinct selected texts (each collection is streamed and only the passages the triples use
    are kept, once each) and one chunk of rows, never the whole multi-language table. Arguments
    and errors as :func:`load_mmarco`; argument errors are raised at the call, data errors while
    iterating.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("not an mMARCO directory", path=root)
    if negatives_per_pair < 0:
        raise DataError("must be >= 0", field="negatives_per_pair", value=negatives_per_pair)
    codes = [MMARCO_LANGUAGES.get(lang, lang) for lang in langs] if langs else mmarco_langs(root)
    if not codes:
        raise DataError("no collections/{language}_collection.tsv files", path=root)
    for code in codes:
        check_lang(code, path=root)
        mmarco_name(code)
    return _iter_languages(root, codes, split, max_triples, negatives_per_pair)


def _iter_languages(root: Path, codes: list[str], split: str, max_triples: int | None,
                    negatives_per_pair: int) -> Iterator[pa.Table]:
    triples = read_triples(root, max_triples)
    grouped = triples.group_by(["qid", "pos_id"], use_threads=False).aggregate([("neg_id", "list")])
    del triples
    qids, pos_ids = grouped.column("qid").combine_chunks(), grouped.column("pos_id").combine_chunks()
    negs = pc.list_slice(grouped.column("neg_id_list").combine_chunks(), 0, negatives_per_pair)
    del grouped
    neg_offsets = negs.offsets
    neg_flat = pc.list_flatten(negs)
    pair_ids = pc.binary_join_element_wise(qids, pos_ids, "-")
    doc_ids = pa.concat_arrays([pos_ids, neg_flat])
    n_pairs = len(pair_ids)
    base = neg_offsets[0].as_py()  # offset of the first negative in neg_flat
    for code in codes:
        name = mmarco_name(code)
        qpath = root / "queries" / split / f"{name}_queries.{split}.tsv"
        cpath = root / "collections" / f"{name}_collection.tsv"
        q_idx, q_texts = _lookup_index(qpath, qids, "query")
        d_idx, d_texts = _lookup_index(cpath, doc_ids, "passage")
        lang = pa.scalar(code, pa.string())
        # Output in chunks of pairs: only the distinct texts stay in memory, not the rows.
        for start in range(0, n_pairs, PAIRS_CHUNK):
            n = min(PAIRS_CHUNK, n_pairs - start)
            offs = neg_offsets.slice(start, n + 1)
            first, last = offs[0].as_py(), offs[-1].as_py()
            neg_idx = d_idx.slice(n_pairs + first - base, last - first)
            table = pa.table(
                {
                    "pair_id": pair_ids.slice(start, n),
                    "lang": pa.repeat(lang, n),
                    "query": pc.take(q_texts, q_idx.slice(start, n)),
                    "positive": pc.take(d_texts, d_idx.slice(start, n)),
                    "negatives": pa.ListArray.from_arrays(pc.subtract(offs, first), pc.take(d_texts, neg_idx)),
                },
                schema=PAIRS_SCHEMA,
            )
            yield validate_pairs_table(table, path=root)
        del q_idx, q_texts, d_idx, d_texts


def load_mmarco(
    root: str | Path,
    langs: list[str] | None = None,
    *,
    split: str = "train",
    max_triples: int | None = None,
    negatives_per_pair: int = 1,
) -> pa.Table:
    """mMARCO triples as a validated long-layout pairs table (one row per pair and language).

    ``langs`` are ISO codes or mMARCO names (default: every language with a collection).
    ``max_triples`` reads only the first N triples (the full file has ~40M). Everything in
    memory; ``data convert`` streams the same rows (:func:`iter_mmarco`).
    """
    tables = list(iter_mmarco(root, langs, split=split, max_triples=max_triples,
                              negatives_per_pair=negatives_per_pair))
    return validate_pairs_table(pa.concat_tables(tables), path=Path(root))


register_format(DataFormat(
    name="mmarco",
    label="mMARCO",
    description="mMARCO collections / queries / triples TSVs (training; convert to pairs first)",
    kind="pairs",
    detect=lambda path: path.is_dir() and (path / "collections").is_dir(),
    convert=lambda path, opts: load_mmarco(path, opts.langs, split=opts.split or "train",
                                           max_triples=opts.max_triples,
                                           negatives_per_pair=opts.negatives_per_pair),
    convert_stream=lambda path, opts: iter_mmarco(path, opts.langs, split=opts.split or "train",
                                                  max_triples=opts.max_triples,
                                                  negatives_per_pair=opts.negatives_per_pair),
    priority=50,
))
