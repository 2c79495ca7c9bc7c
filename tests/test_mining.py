"""Hard-negative mining: exclusions, rank window and margin, resume, and a valid output data set.

Most tests replace the encoder by a table of hand-made vectors (``fake_vectors``) so that the
nearest neighbours of a query are, by construction, exactly what must never become a negative:
its own positive, the parallel version of it, a duplicate of the query text and a near-duplicate
of the positive. One test runs the real path (tiny random encoder, the CLI) end to end.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hybrid_ray import cli
from hybrid_ray import encode_ray as build_mod
from hybrid_ray.data.pairs import read_pairs, write_pairs
from hybrid_ray.data.parallel import ParallelPairs
from hybrid_ray.mining import MiningConfig, RowFacts, mine_table, normalize_texts, select_negatives

D = 16


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _e(i: int) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1
    return v


def synthetic() -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Six pairs in en/de. For the query of pair 0 the closest passages are, in order: a
    duplicate of the query text (pair 5 en, written 'Query 0, EN!'), its own positive and the
    parallel German positive (the same vector), a near-duplicate of the positive (pair 4 en);
    only then the legitimate candidates pair 1 > pair 2 > pair 3."""
    rows, vec = [], {}
    langs = ["en", "de"]
    for p in range(6):
        for li, lang in enumerate(langs):
            q, pos = f"query {p} {lang}", f"answer {p} {lang}"
            vec[q] = _unit(_e(p) + 0.3 * _e(10 + li))
            vec[pos] = _e(0) if p == 0 else _unit(_e(p) + {1: 0.6, 2: 0.4, 3: 0.2}.get(p, 0.0) * _e(0))
            if (p, lang) == (4, "en"):
                pos = "A rephrased answer zero"
                vec[pos] = _unit(_e(0) + 0.05 * _e(15))
            if (p, lang) == (5, "en"):
                pos = "Query 0, EN!"  # normalises to the query text of pair 0 (en)
                vec[pos] = vec["query 0 en"]
            rows.append({"pair_id": f"p{p}", "lang": lang, "query": q, "positive": pos, "negatives": ["orig"]})
    return pa.Table.from_pylist(rows), vec


@pytest.fixture
def fake_encoder(monkeypatch, tmp_path):
    """Route the in-process encoding path to a text -> vector table; count encoded texts."""
    calls = {"texts": 0}
    table, vec = synthetic()

    def encode_rows_local(model_dir, texts, ranges, *, batch_size=64, kind="passage", **_):
        for s, e in ranges:
            chunk = texts.slice(s, e - s).to_pylist()
            calls["texts"] += len(chunk)
            yield np.arange(s, e, dtype=np.int64), np.stack([vec[t] for t in chunk])

    monkeypatch.setattr(build_mod, "encode_rows_local", encode_rows_local)
    model = tmp_path / "fake-model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"fake")
    return table, model, calls


def _by_row(table: pa.Table) -> dict[tuple[str, str], dict]:
    return {(r["pair_id"], r["lang"]): r for r in table.to_pylist()}


def _norm(texts: list[str]) -> list[str]:
    return normalize_texts(pa.array(texts, pa.string())).to_pylist()


@pytest.mark.parametrize("mode", ["own", "all"])
def test_parallel_versions_and_duplicates_never_become_negatives(fake_encoder, tmp_path, mode):
    table, model, _ = fake_encoder
    _, vec = synthetic()
    # The construction is meaningful: the four closest passages of query p0/en are all forbidden.
    passages = table.column("positive").to_pylist()
    scores = np.stack([vec[t] for t in passages]) @ vec["query 0 en"]
    top = [passages[i] for i in np.argsort(-scores, kind="stable")[:4]]
    assert set(top) == {"Query 0, EN!", "answer 0 en", "answer 0 de", "A rephrased answer zero"}

    cfg = MiningConfig(num_negatives=3, range_max=6, langs_mode=mode, encode="local")
    out, stats = mine_table(table, model, tmp_path / "work", cfg)
    rows = _by_row(out)
    by_pair: dict[str, set[str]] = {}
    for r in table.to_pylist():
        by_pair.setdefault(r["pair_id"], set()).add(r["positive"])
    for (pid, _lang), r in rows.items():
        assert r["negatives"], (pid, _lang)
        assert not set(r["negatives"]) & by_pair[pid]  # no version of its own positive, any language
        forbidden = set(_norm([r["query"], r["positive"]]))
        assert not set(_norm(r["negatives"])) & forbidden  # no duplicate of the query or positive
        assert len(set(_norm(r["negatives"]))) == len(r["negatives"])
        assert len(r["negatives"]) <= 3
    # In "all" mode p1/en and p1/de tie (same vector): the lower table row (p1/en) comes first.
    expected = {"own": ["answer 1 en", "answer 2 en", "answer 3 en"],
                "all": ["answer 1 en", "answer 1 de", "answer 2 en"]}[mode]
    assert rows[("p0", "en")]["negatives"] == expected
    assert stats["rows_mined"] == table.num_rows
    assert sum(v["negatives"] for v in stats["langs"].values()) == sum(len(r["negatives"]) for r in rows.values())


def test_rank_window_and_margin_hand_checked():
    # Query row 0; candidates best first. Row 5's text duplicates the query, row 0 is the positive.
    facts = RowFacts(pair=np.array([0, 1, 2, 3, 4, 5]), query_text=np.array([10, 11, 12, 13, 14, 15]),
                     positive_text=np.array([20, 21, 22, 23, 24, 10]))
    ids = np.array([[0, 5, 1, 2, 3, 4]])
    scores = np.array([[0.9, 0.85, 0.8, 0.7, 0.6, 0.5]], np.float32)
    pos_score = np.array([0.9], np.float32)
    pos_sim = np.zeros((1, 6), np.float32)

    def pick(**kw):
        cfg = MiningConfig(**({"num_negatives": 2, "range_max": 4} | kw))
        chosen, complete = select_negatives(np.array([0]), scores, ids, pos_score, pos_sim, facts, cfg)
        return ids[0, chosen[0]].tolist(), bool(complete[0])

    # Eligible ranking (positive and the query duplicate removed): 1 (.8), 2 (.7), 3 (.6), 4 (.5).
    assert pick() == ([1, 2], True)
    assert pick(range_min=1, range_max=3) == ([2, 3], True)  # ranks 2..3
    assert pick(range_min=1, range_max=3, margin=0.75) == ([3], True)  # .7 > .75 x .9 = .675 >= .6
    assert pick(num_negatives=4, range_max=4, margin=0.6) == ([4], True)  # only .5 <= .54
    assert pick(num_negatives=2, range_max=5) == ([1, 2], False)  # only 4 eligible: search wider
    near = pos_sim.copy()
    near[0, 2] = 0.97  # row 1 is a near-duplicate of the positive
    chosen, _ = select_negatives(np.array([0]), scores, ids, pos_score, near, facts, MiningConfig(2, range_max=3))
    assert ids[0, chosen[0]].tolist() == [2, 3]


def test_margin_and_range_through_mine_table(fake_encoder, tmp_path):
    table, model, _ = fake_encoder
    _, vec = synthetic()
    q = vec["query 0 en"]
    s = {p: float(vec[f"answer {p} en"] @ q) for p in (1, 2, 3)}
    pos = float(vec["answer 0 en"] @ q)
    margin = (s[2] / pos + s[1] / pos) / 2  # between: keeps pair 2 and 3, drops pair 1
    cfg = MiningConfig(num_negatives=3, range_min=0, range_max=4, margin=margin, encode="local", langs=("en",))
    out, _ = mine_table(table, model, tmp_path / "w1", cfg)
    rows = _by_row(out)
    assert rows[("p0", "en")]["negatives"] == ["answer 2 en", "answer 3 en"]
    assert rows[("p0", "de")]["negatives"] == ["orig"]  # languages not mined are copied through
    cfg = MiningConfig(num_negatives=1, range_min=2, range_max=3, encode="local", langs=("en",))
    out, _ = mine_table(table, model, tmp_path / "w2", cfg)
    assert _by_row(out)[("p0", "en")]["negatives"] == ["answer 3 en"]


def test_resume_after_interruption_gives_the_same_output(fake_encoder, tmp_path, monkeypatch):
    import hybrid_ray.mining as mining

    table, model, calls = fake_encoder
    cfg = MiningConfig(num_negatives=2, range_max=4, encode="local")
    fresh, fresh_stats = mine_table(table, model, tmp_path / "fresh", cfg)

    real = mining._mine_language
    done: list[int] = []

    def crash_on_second(*args, **kw):
        if done:
            raise KeyboardInterrupt("killed")
        done.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(mining, "_mine_language", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        mine_table(table, model, tmp_path / "work", cfg)
    finished = sorted(p.name for p in (tmp_path / "work").glob("lang-*.json"))
    assert finished == ["lang-de.json"]  # the first language's marker survived the crash

    counted: list[int] = []

    def counting(*args, **kw):
        counted.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(mining, "_mine_language", counting)
    before = calls["texts"]
    resumed, stats = mine_table(table, model, tmp_path / "work", cfg)
    assert counted == [1]  # only the unfinished language was mined again
    assert calls["texts"] == before  # embeddings reused, not re-encoded
    assert resumed.equals(fresh)
    assert stats["langs"] == fresh_stats["langs"]
    # Changed parameters make the finished markers stale: everything is mined again.
    counted.clear()
    mine_table(table, model, tmp_path / "work", MiningConfig(num_negatives=1, range_max=4, encode="local"))
    assert counted == [1, 1]


def _dataset(path):
    rows = [{"pair_id": f"v{i}", "lang": lang, "query": f"the {w} of day {i}", "positive": f"{w} light {i} {lang}",
             "negatives": []}
            for i, w in enumerate(["earth", "water", "heaven", "night", "house", "cat", "dog", "world"])
            for lang in ("en", "de")]
    write_pairs(pa.Table.from_pylist(rows), path / "train.parquet")
    write_pairs(pa.Table.from_pylist(rows[:4]), path / "dev.parquet")
    (path / "meta.json").write_text(json.dumps({"name": "toy"}))


def test_cli_mines_with_the_real_encoder_and_output_is_a_valid_data_set(tiny_model_dir, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "mined"
    data.mkdir()
    _dataset(data)
    code = cli.main(["mine", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                     "--num-negatives", "3", "--range-max", "5", "--encode", "local",
                     "--max-sim", "1.0"])  # a random tiny encoder puts every text near every other
    assert code == 0
    mined = read_pairs(out, "train")  # read_pairs validates: what `hybrid-ray train` loads
    ParallelPairs.from_table(mined)
    assert (out / "dev.parquet").read_bytes() == (data / "dev.parquet").read_bytes()
    assert (out / "meta.json").read_bytes() == (data / "meta.json").read_bytes()
    stats = json.loads((out / "mining.json").read_text())
    counts = [len(n) for n in mined.column("negatives").to_pylist()]
    assert stats["rows_mined"] == 16 and stats["negatives_per_row"]["max"] == max(counts) <= 3
    assert min(counts) >= 1 and stats["negatives_per_row"]["min"] == min(counts)
    for r in mined.to_pylist():
        same_pair = {x["positive"] for x in mined.to_pylist() if x["pair_id"] == r["pair_id"]}
        assert not set(r["negatives"]) & same_pair
    assert "rows mined" in capsys.readouterr().out


@pytest.mark.parametrize(("flags", "needle"), [
    (["--langs", "xx"], "'langs'"),
    (["--langs", "fr"], "--langs"),
    (["--range-max", "9"], "--range-max"),
    (["--num-negatives", "6", "--range-max", "5"], "--range-max"),
])
def test_bad_input_names_the_flag(fake_encoder, tmp_path, capsys, flags, needle):
    table, model, _ = fake_encoder
    data = tmp_path / "d"
    data.mkdir()
    write_pairs(table, data / "train.parquet")
    code = cli.main(["mine", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--encode", "local", *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    write_pairs(synthetic()[0], data / "train.parquet")
    code = cli.main(["mine", "--model", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--model" in err and "nope" in err
