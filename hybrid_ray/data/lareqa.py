"""Load LAReQA-format evaluation sets (XQuAD-R, MLQA-R) into a :class:`RetrievalSet`.

Layout: a directory with one SQuAD-style ``{lang}.json`` per language (see the reference paper
notes). Every paragraph's ``sentences`` (character spans in ``sentence_breaks``) become retrieval
candidates; questions become queries. A candidate is relevant to a query when it holds the answer
(the answer's ``answer_start`` falls in its span) of the SAME question id in ANY language: the
question ids are parallel across the files, so in the pooled multilingual corpus every query has
one relevant sentence per language, which is what the language-bias metric measures.

Ids: ``qid = f"{question_id}/{lang}"`` (as ``RetrievalSet.from_pairs``) and
``docid = f"{lang}/{paragraph_index}/{sentence_index}"`` with the paragraph index running over
the whole file.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from hybrid_ray.data.formats import DataFormat, register_format
from hybrid_ray.data.retrieval import RetrievalSet
from hybrid_ray.data.schema import check_lang
from hybrid_ray.errors import DataError


def _get(obj: Any, key: str, where: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]`` checked for presence and type; errors name the file and JSON path."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataError("missing key", path=path, field=f"{where}.{key}" if where else key)
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(
            f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}",
            path=path, field=f"{where}.{key}" if where else key,
        )
    return value


class _LangFile:
    """The parsed content of one ``{lang}.json``."""

    def __init__(self, path: Path, lang: str) -> None:
        self.path = path
        self.lang = lang
        self.questions: dict[str, str] = {}  # question id -> question text (file order)
        self.answer_docs: dict[str, set[str]] = defaultdict(set)  # question id -> docids
        self.docids: list[str] = []
        self.texts: list[str] = []


def _sentence_of(starts: list[int], answer_start: int) -> int:
    """Index of the sentence whose span holds ``answer_start`` (a gap belongs to the left one)."""
    return max(bisect.bisect_right(starts, answer_start) - 1, 0)


def _parse_file(path: Path, lang: str) -> _LangFile:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    out = _LangFile(path, lang)
    articles = _get(doc, "data", "", path, list)
    para_no = 0
    for a, article in enumerate(articles):
        for p, para in enumerate(_get(article, "paragraphs", f"data[{a}]", path, list)):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(para, "context", where, path, str)
            breaks = _get(para, "sentence_breaks", where, path, list)
            if not breaks:
                raise DataError("paragraph has no sentences", path=path, field=f"{where}.sentence_breaks")
            try:
                spans = [(int(b[0]), int(b[1])) for b in breaks]
            except (TypeError, ValueError, IndexError):
                raise DataError(
                    "expected [[start, end], ...]", path=path, field=f"{where}.sentence_breaks"
                ) from None
            starts = [s for s, _ in spans]
            if isinstance(para, dict) and "sentences" in para:
                sentences = _get(para, "sentences", where, path, list)
                if len(sentences) != len(breaks):
                    raise DataError(
                        f"{len(sentences)} sentences but {len(breaks)} sentence_breaks",
                        path=path, field=f"{where}.sentences",
                    )
            else:  # derive the sentence texts from the spans
                sentences = [context[s:e] for s, e in spans]
            docids = [f"{lang}/{para_no}/{s}" for s in range(len(sentences))]
            keep = []
            for s, (docid, text) in enumerate(zip(docids, sentences, strict=True)):
                if not isinstance(text, str):
                    raise DataError("expected a string", path=path, field=f"{where}.sentences[{s}]")
                if text.strip():  # an empty sentence can never be retrieved meaningfully
                    out.docids.append(docid)
                    out.texts.append(text.strip())
                    keep.append(s)
            kept = set(keep)
            for q, qa in enumerate(_get(para, "qas", where, path, list)):
                qwhere = f"{where}.qas[{q}]"
                qid = _get(qa, "id", qwhere, path, (str, int))
                qid = str(qid)
                question = _get(qa, "question", qwhere, path, str)
                if not question.strip():
                    raise DataError("empty question text", path=path, field=f"{qwhere}.question", value=qid)
                if qid in out.questions:
                    raise DataError("duplicate question id", path=path, field=f"{qwhere}.id", value=qid)
                answers = _get(qa, "answers", qwhere, path, list)
                if not answers:
                    raise DataError(
                        "question has no answers", path=path, field=f"{qwhere}.answers", value=qid
                    )
                for n, ans in enumerate(answers):
                    start = _get(ans, "answer_start", f"{qwhere}.answers[{n}]", path, int)
                    if not 0 <= start <= len(context):
                        raise DataError(
                            f"answer_start outside the context (length {len(context)})",
                            path=path, field=f"{qwhere}.answers[{n}].answer_start", value=start,
                        )
                    s = _sentence_of(starts, start)
                    if s not in kept:
                        raise DataError(
                            "the answer lies in an empty sentence",
                            path=path, field=f"{qwhere}.answers[{n}]", value=qid,
                        )
                    out.answer_docs[qid].add(docids[s])
                out.questions[qid] = question.strip()
            para_no += 1
    return out


def lareqa_files(path: str | Path, langs: list[str] | None = None) -> dict[str, Path]:
    """``{lang: file}`` of a LAReQA directory (or a single ``{lang}.json``), languages checked."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.glob("*.json") if not p.name.startswith("."))
    else:
        raise DataError("no such file or directory", path=path)
    found: dict[str, Path] = {}
    for f in files:
        found[check_lang(f.stem, path=f, field="file name")] = f
    if not found:
        raise DataError("no {lang}.json files", path=path)
    if langs is not None:
        missing = [lang for lang in langs if lang not in found]
        if missing:
            raise DataError(f"no file for language(s) {missing} (have {sorted(found)})", path=path)
        found = {lang: found[lang] for lang in langs}
    return dict(sorted(found.items()))


def load_lareqa(path: str | Path, langs: list[str] | None = None, name: str | None = None) -> RetrievalSet:
    """Load XQuAD-R / MLQA-R JSON files into one multilingual :class:`RetrievalSet`.

    Raises DataError for missing keys (file + JSON path), an unknown language file name, and
    question ids that are not parallel across the language files ("unaligned parallel ids").
    """
    files = lareqa_files(path, langs)
    parsed = [_parse_file(f, lang) for lang, f in files.items()]
    ref = parsed[0]
    ref_ids = set(ref.questions)
    for other in parsed[1:]:
        ids = set(other.questions)
        for a, b, missing in ((ref, other, ref_ids - ids), (other, ref, ids - ref_ids)):
            if missing:
                qid = sorted(missing)[0]
                raise DataError(
                    f"unaligned parallel ids: question id {qid!r} is in {a.path} but missing from "
                    f"{b.path} ({len(missing)} id(s) differ)",
                    path=b.path, field="id", value=qid,
                )
    relevant: dict[str, dict[str, int]] = defaultdict(dict)
    for f in parsed:
        for qid, docs in f.answer_docs.items():
            for d in docs:
                relevant[qid][d] = 1
    qids, qlangs, qtexts, qrels = [], [], [], {}
    for f in parsed:
        for qid, text in f.questions.items():
            key = f"{qid}/{f.lang}"
            qids.append(key)
            qlangs.append(f.lang)
            qtexts.append(text)
            qrels[key] = dict(relevant[qid])
    queries = pa.table({"qid": qids, "lang": qlangs, "text": qtexts})
    corpus = pa.table(
        {
            "docid": [d for f in parsed for d in f.docids],
            "lang": [f.lang for f in parsed for _ in f.docids],
            "text": [t for f in parsed for t in f.texts],
        }
    )
    src = Path(path)
    return RetrievalSet(name=name or src.stem, queries=queries, corpus=corpus, qrels=qrels)


def _is_lareqa(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".json"
    return path.is_dir() and any(
        p for p in path.glob("*.json") if p.name != "meta.json" and not p.name.startswith(".")
    )


register_format(DataFormat(
    name="lareqa",
    label="LAReQA",
    description="XQuAD-R / MLQA-R: one SQuAD-style {lang}.json per language (evaluation only)",
    kind="retrieval",
    detect=_is_lareqa,
    load_retrieval=lambda path, split, langs: load_lareqa(path, langs=langs),
    convert=lambda path, opts: load_lareqa(path, opts.langs),
    splits=lambda path: {path.stem: None},
    priority=40,
))
