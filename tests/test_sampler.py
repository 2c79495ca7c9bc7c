"""Property tests of the cluster-wide hybrid batch sampler (fast: small synthetic matrices)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_ray.errors import ConfigError
from hybrid_ray.permutation import FeistelPermutation, RankSelect
from hybrid_ray.sampler import HybridBatchSampler, language_distribution, rank_slice

LANGS = ["ar", "de", "en", "hi", "zh"]
FAST = settings(max_examples=25, deadline=None)


def partial_matrix(seed: int, n_pairs: int = 300, n_langs: int = 5, min_count: int = 32) -> np.ndarray:
    """Partially-parallel availability with unequal language sizes (each language >= min_count)."""
    rng = np.random.default_rng(seed)
    keep = rng.uniform(0.35, 1.0, size=n_langs)  # per-language coverage differs
    avail = rng.random((n_pairs, n_langs)) < keep
    avail[:min_count, :] = True  # guarantee enough pairs per language and for cross batches
    return avail


def check_batch(s: HybridBatchSampler, b) -> None:
    assert len(b) == s.global_batch_size
    assert len(np.unique(b.pair_idx)) == len(b), "duplicate pair in a global batch"
    assert s.available[b.pair_idx, b.q_lang].all() and s.available[b.pair_idx, b.p_lang].all()
    if b.kind == "mono":
        assert (b.q_lang == b.q_lang[0]).all() and (b.p_lang == b.q_lang).all()
    else:
        assert (b.q_lang != b.p_lang).all()


@FAST
@given(
    seed=st.integers(0, 2**31), alpha=st.sampled_from([0.0, 0.3, 0.5, 1.0]), bsz=st.sampled_from([8, 16, 32])
)
def test_batches_are_valid_on_partial_unequal_data(seed: int, alpha: float, bsz: int) -> None:
    s = HybridBatchSampler(partial_matrix(seed), LANGS, bsz, alpha=alpha, seed=seed, steps_per_epoch=40)
    kinds = set()
    for b in s.iter_epoch(0):
        check_batch(s, b)
        kinds.add(b.kind)
    if alpha == 0.0:
        assert kinds == {"cross"}
    if alpha == 1.0:
        assert kinds == {"mono"}


@FAST
@given(seed=st.integers(0, 2**31), alpha=st.floats(0.05, 0.95))
def test_mono_fraction_converges_to_alpha(seed: int, alpha: float) -> None:
    n = 3000
    s = HybridBatchSampler(partial_matrix(seed % 1000), LANGS, 8, alpha=alpha, seed=seed, steps_per_epoch=n)
    is_mono, _, _ = s.epoch_plan(0)
    tol = 5 * np.sqrt(alpha * (1 - alpha) / n)
    assert abs(is_mono.mean() - alpha) < tol
    # and the materialised batches agree with the plan
    assert [s.batch(0, t).kind == "mono" for t in range(50)] == list(is_mono[:50])


@FAST
@given(
    seed=st.integers(0, 2**31), world=st.sampled_from([1, 2, 4, 8]), alpha=st.sampled_from([0.0, 0.5, 1.0])
)
def test_ranks_agree_and_slices_partition(seed: int, world: int, alpha: float) -> None:
    avail = partial_matrix(seed % 100, n_pairs=256)
    ref = HybridBatchSampler(avail, LANGS, 32, alpha=alpha, seed=seed, steps_per_epoch=12)
    # each "rank" builds its own sampler, as a separate process would: no shared state
    per_rank = [
        list(HybridBatchSampler(avail.copy(), LANGS, 32, alpha=alpha, seed=seed, steps_per_epoch=12)
             .iter_epoch(1, rank=r, world_size=world))
        for r in range(world)
    ]
    assert len({len(x) for x in per_rank}) == 1 and len(per_rank[0]) == ref.steps_per_epoch
    for step in range(ref.steps_per_epoch):
        glob = ref.batch(1, step)
        slices = [per_rank[r][step] for r in range(world)]
        assert len({sl.kind for sl in slices}) == 1  # the kind is global, never per rank
        np.testing.assert_array_equal(np.concatenate([sl.pair_idx for sl in slices]), glob.pair_idx)
        np.testing.assert_array_equal(np.concatenate([sl.q_lang for sl in slices]), glob.q_lang)
        np.testing.assert_array_equal(np.concatenate([sl.p_lang for sl in slices]), glob.p_lang)
        ids = [set(sl.pair_idx.tolist()) for sl in slices]
        assert sum(map(len, ids)) == len(set().union(*ids)) == 32  # disjoint and covering


@pytest.mark.parametrize(
    "mode,kw",
    [("uniform", {}), ("temperature", {"lang_temperature": 2.0}), ("temperature", {"lang_temperature": 1.0}),
     ("weights", {"lang_weights": {"ar": 1, "de": 0, "en": 4, "hi": 2, "zh": 1}})],
)
def test_language_frequencies_match_distribution(mode: str, kw: dict) -> None:
    avail = partial_matrix(7, n_pairs=2000)
    counts = avail.sum(0)
    s = HybridBatchSampler(
        avail, LANGS, 16, alpha=1.0, seed=1, lang_sampling=mode, steps_per_epoch=6000, **kw
    )
    if mode == "uniform":
        expected = np.full(5, 0.2)
    elif mode == "temperature":
        w = counts ** (1 / kw["lang_temperature"])
        expected = w / w.sum()
    else:
        w = np.array([kw["lang_weights"][lang] for lang in LANGS], float)
        expected = w / w.sum()
    np.testing.assert_allclose(s.lang_probs, expected)
    _, stream, _ = s.epoch_plan(0)
    freq = np.bincount(stream, minlength=5) / len(stream)
    np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / len(stream)))
    # materialised mono batches carry the planned language
    for t in range(20):
        assert s.batch(0, t).q_lang[0] == stream[t]


def test_cross_query_language_follows_distribution_on_parallel_data() -> None:
    avail = np.ones((500, 5), bool)
    w = {"ar": 1, "de": 2, "en": 3, "hi": 2, "zh": 2}
    s = HybridBatchSampler(avail, LANGS, 50, alpha=0.0, seed=0, lang_sampling="weights", lang_weights=w,
                           steps_per_epoch=400)
    q = np.concatenate([s.batch(0, t).q_lang for t in range(400)])
    expected = np.array([w[lang] for lang in LANGS]) / 10
    np.testing.assert_allclose(np.bincount(q, minlength=5) / len(q), expected, atol=0.01)


@FAST
@given(seed=st.integers(0, 2**31), cut=st.integers(0, 30), world=st.sampled_from([1, 2, 4]))
def test_resume_reproduces_rest_of_epoch(seed: int, cut: int, world: int) -> None:
    avail = partial_matrix(seed % 50)
    mk = lambda: HybridBatchSampler(avail, LANGS, 16, alpha=0.5, seed=seed, steps_per_epoch=30)  # noqa: E731
    full = list(mk().iter_epoch(2, rank=world - 1, world_size=world))
    first = mk()
    it = first.iter_epoch(2, rank=world - 1, world_size=world)
    for _ in range(cut):
        next(it)
    state = first.state_dict()
    assert (state["epoch"], state["step"]) == (2, cut)
    resumed = mk()  # a fresh process
    resumed.load_state_dict(state)
    rest = list(resumed.iter_from_state(num_epochs=3, rank=world - 1, world_size=world))
    assert len(rest) == 30 - cut
    assert all(a.equals(b) for a, b in zip(full[cut:], rest, strict=True))


def test_state_from_other_config_is_refused() -> None:
    avail = partial_matrix(0)
    a = HybridBatchSampler(avail, LANGS, 16, alpha=0.5, seed=1)
    b = HybridBatchSampler(avail, LANGS, 16, alpha=0.4, seed=1)
    with pytest.raises(ConfigError, match="fingerprint"):
        b.load_state_dict(a.state_dict())
    b.load_state_dict(a.state_dict(), strict=False)


def test_streams_are_without_replacement_within_a_round() -> None:
    """Over a round, a language's mono batches are disjoint and, as rounds roll, every pair comes."""
    avail = partial_matrix(3, n_pairs=200)
    s = HybridBatchSampler(avail, LANGS, 10, alpha=1.0, seed=5, steps_per_epoch=400)
    seen: dict[int, list[np.ndarray]] = {}
    for t in range(400):
        b = s.batch(0, t)
        seen.setdefault(int(b.q_lang[0]), []).append(b.pair_idx)
    for lang, batches in seen.items():
        per_round = int(avail[:, lang].sum()) // 10
        first_round = np.concatenate(batches[:per_round])
        assert len(np.unique(first_round)) == len(first_round)
        assert set(np.concatenate(batches).tolist()) == set(np.flatnonzero(avail[:, lang]).tolist())


def test_epochs_differ_and_default_steps() -> None:
    s = HybridBatchSampler(np.ones((100, 5), bool), LANGS, 10, alpha=0.5, seed=0)
    assert s.steps_per_epoch == len(s) == 10
    assert not all(s.batch(0, t).equals(s.batch(1, t)) for t in range(10))


def test_configuration_errors() -> None:
    avail = partial_matrix(0, n_pairs=100, min_count=5)
    small = int(avail.sum(0).min())
    with pytest.raises(ConfigError, match="monolingual batch needs"):
        HybridBatchSampler(avail, LANGS, small + 1, alpha=0.5)
    # alpha=0 never draws mono batches, so small languages are fine there
    HybridBatchSampler(avail, LANGS, small + 1, alpha=0.0)
    only_one = np.zeros((100, 5), bool)
    only_one[:, 0] = True
    with pytest.raises(ConfigError, match="cross-lingual batch needs"):
        HybridBatchSampler(only_one, LANGS, 8, alpha=0.5)
    with pytest.raises(ConfigError, match="lang_weights"):
        HybridBatchSampler(avail, LANGS, 4, lang_sampling="weights", lang_weights={"en": 1})
    with pytest.raises(ConfigError, match="alpha"):
        HybridBatchSampler(avail, LANGS, 4, alpha=1.5)
    with pytest.raises(ConfigError, match="divisible"):
        rank_slice(HybridBatchSampler(avail, LANGS, 4).batch(0, 0), 0, 3)


def test_zero_weight_language_never_sampled() -> None:
    avail = partial_matrix(1)
    w = {"ar": 1, "de": 1, "en": 1, "hi": 0, "zh": 1}
    s = HybridBatchSampler(avail, LANGS, 8, alpha=0.5, seed=0, lang_sampling="weights", lang_weights=w,
                           steps_per_epoch=200)
    for t in range(200):
        b = s.batch(0, t)
        assert 3 not in b.q_lang and 3 not in b.p_lang


def test_language_distribution_temperature_limits() -> None:
    counts = np.array([1000, 100, 10, 0])
    langs = ["en", "de", "sw", "yo"]
    p1 = language_distribution(counts, langs, "temperature", 1.0)
    np.testing.assert_allclose(p1, [1000 / 1110, 100 / 1110, 10 / 1110, 0])
    p_hot = language_distribution(counts, langs, "temperature", 1e6)
    np.testing.assert_allclose(p_hot, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 16, 17, 100, 1000, 4097, 65_537])
def test_feistel_is_a_true_permutation(n: int) -> None:
    """Every index exactly once, for powers of two and not (cycle walking covers the gap)."""
    for key in [(0, 0, 1, 0, 0), (7, 3, 2, 0, 5)]:
        out = FeistelPermutation(n, key).slice(0, n)
        assert out.dtype == np.int64 and out.min() >= 0 and out.max() < n
        np.testing.assert_array_equal(np.sort(out), np.arange(n))
    # different keys shuffle differently, equal keys identically (a pure function of the key)
    if n >= 100:
        a, b = FeistelPermutation(n, (1, 0)).slice(0, n), FeistelPermutation(n, (1, 1)).slice(0, n)
        assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(n))
        np.testing.assert_array_equal(a, FeistelPermutation(n, (1, 0)).slice(0, n))
        # a slice is the same whether computed alone or as part of the whole sequence
        np.testing.assert_array_equal(FeistelPermutation(n, (1, 0)).slice(37, 61), a[37:61])
    with pytest.raises(IndexError):
        FeistelPermutation(n, (0,))[np.array([n])]


@FAST
@given(seed=st.integers(0, 2**31), n=st.integers(1, 700), density=st.floats(0.01, 1.0))
def test_rank_select_finds_the_jth_true(seed: int, n: int, density: float) -> None:
    mask = np.random.default_rng(seed).random(n) < density
    sel = RankSelect(mask)
    expected = np.flatnonzero(mask)
    assert sel.count == expected.size
    np.testing.assert_array_equal(sel(np.arange(sel.count)), expected)


@pytest.mark.parametrize("n_pairs", [97, 256, 1000])
def test_each_stream_round_is_a_permutation_of_its_pairs(n_pairs: int) -> None:
    """One round of a stream's permutation visits each of the stream's pairs exactly once."""
    avail = partial_matrix(n_pairs, n_pairs=n_pairs, min_count=20)
    s = HybridBatchSampler(avail, LANGS, 8, alpha=0.5, seed=3)
    cross = (avail.sum(1) >= 2)
    for stream in range(len(LANGS) + 1):
        pool = np.flatnonzero(avail[:, stream] if stream < len(LANGS) else cross)
        for rnd in (0, 1):
            got = s.stream_pairs(epoch=1, stream=stream, rnd=rnd, start=0, stop=pool.size)
            np.testing.assert_array_equal(np.sort(got), pool)


def test_plan_does_not_depend_on_rank_or_world_split() -> None:
    """Global batches are a pure function of (seed, epoch, step): the same whichever world size
    slices them, whichever rank asks first, and in whatever order steps are requested."""
    avail = partial_matrix(11, n_pairs=400)
    mk = lambda: HybridBatchSampler(avail, LANGS, 16, alpha=0.5, seed=9, steps_per_epoch=20)  # noqa: E731
    reference = [mk().batch(0, t) for t in range(20)]
    for world in (1, 2, 4, 8):
        per_rank = [list(mk().iter_epoch(0, rank=r, world_size=world)) for r in reversed(range(world))][::-1]
        for t in range(20):
            glued = np.concatenate([per_rank[r][t].pair_idx for r in range(world)])
            np.testing.assert_array_equal(glued, reference[t].pair_idx)
    shuffled = mk()
    for t in np.random.default_rng(0).permutation(20):
        assert shuffled.batch(0, int(t)).equals(reference[int(t)])
