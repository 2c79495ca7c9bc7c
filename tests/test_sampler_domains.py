"""Domain weighting in the hybrid sampler: frequencies as configured, alpha-independent, resume-exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_ray.errors import ConfigError
from hybrid_ray.sampler import HybridBatchSampler

LANGS = ["ar", "de", "en", "hi", "zh"]
DOMAINS = ["history", "law", "letters"]
FAST = settings(max_examples=20, deadline=None)


def data(seed: int, n_pairs: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    """Partially parallel availability and unequal domain sizes (every stream >= 64 pairs)."""
    rng = np.random.default_rng(seed)
    avail = rng.random((n_pairs, len(LANGS))) < rng.uniform(0.5, 1.0, size=len(LANGS))
    dom = rng.choice(3, size=n_pairs, p=[0.6, 0.3, 0.1])
    dom[:300] = np.repeat(np.arange(3), 100)
    avail[:300] = True
    return avail, dom


def sampler(avail, dom, **kw) -> HybridBatchSampler:
    base = dict(alpha=0.5, seed=3, steps_per_epoch=4000, domain_of=dom, domains=DOMAINS)
    return HybridBatchSampler(avail, LANGS, 16, **{**base, **kw})


@pytest.mark.parametrize(
    "mode,kw",
    [("uniform", {}), ("temperature", {"domain_temperature": 1.0}), ("temperature", {"domain_temperature": 3.0}),
     ("weights", {"domain_weights": {"history": 1, "law": 0, "letters": 3}})],
)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_domain_frequencies_match_configuration(mode: str, kw: dict, alpha: float) -> None:
    avail, dom = data(1)
    s = sampler(avail, dom, alpha=alpha, domain_sampling=mode, **kw)
    counts = np.bincount(dom, minlength=3).astype(float)
    if mode == "uniform":
        expected = np.full(3, 1 / 3)
    elif mode == "temperature":
        w = counts ** (1 / kw["domain_temperature"])
        expected = w / w.sum()
    else:
        w = np.array([kw["domain_weights"][d] for d in DOMAINS], float)
        expected = w / w.sum()
    np.testing.assert_allclose(s.domain_probs, expected)
    # sampled: every batch is domain-pure; its domain's frequency follows the configuration
    seen = np.zeros(3)
    for t in range(600):
        b = s.batch(0, t)
        ds = np.unique(dom[b.pair_idx])
        assert len(ds) == 1
        assert len(np.unique(b.pair_idx)) == len(b)
        assert avail[b.pair_idx, b.q_lang].all() and avail[b.pair_idx, b.p_lang].all()
        seen[ds[0]] += 1
    np.testing.assert_allclose(seen / seen.sum(), expected, atol=5 * np.sqrt(0.25 / 600))


def test_domain_weighting_keeps_the_kind_and_language_draws() -> None:
    avail, dom = data(2)
    plain = HybridBatchSampler(avail, LANGS, 16, alpha=0.4, seed=5, steps_per_epoch=300)
    weighted = sampler(avail, dom, alpha=0.4, seed=5, steps_per_epoch=300, domain_sampling="weights",
                       domain_weights={"history": 1, "law": 1, "letters": 5})
    for t in range(300):
        a, b = plain.batch(0, t), weighted.batch(0, t)
        assert a.kind == b.kind
        if a.kind == "mono":
            assert a.q_lang[0] == b.q_lang[0]
    mono = np.mean([weighted.batch(0, t).kind == "mono" for t in range(300)])
    assert abs(mono - 0.4) < 5 * np.sqrt(0.24 / 300)


def test_without_domain_sampling_nothing_changes() -> None:
    avail, dom = data(3)
    plain = HybridBatchSampler(avail, LANGS, 16, alpha=0.5, seed=9, steps_per_epoch=50)
    labelled = sampler(avail, dom, seed=9, steps_per_epoch=50)  # domain_sampling="none"
    assert all(plain.batch(0, t).equals(labelled.batch(0, t)) for t in range(50))
    assert plain.fingerprint() == labelled.fingerprint()
    assert len(labelled.batch_domain_counts(labelled.batch(0, 0))) >= 1


@FAST
@given(seed=st.integers(0, 2**31), cut=st.integers(0, 40), world=st.sampled_from([1, 2, 4]))
def test_resume_is_exact_with_domains(seed: int, cut: int, world: int) -> None:
    avail, dom = data(seed % 20)
    mk = lambda: sampler(avail, dom, seed=seed, steps_per_epoch=40, domain_sampling="uniform")  # noqa: E731
    full = list(mk().iter_epoch(1, rank=world - 1, world_size=world))
    first = mk()
    it = first.iter_epoch(1, rank=world - 1, world_size=world)
    for _ in range(cut):
        next(it)
    resumed = mk()
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed.iter_from_state(num_epochs=2, rank=world - 1, world_size=world))
    assert all(a.equals(b) for a, b in zip(full[cut:], rest, strict=True))


def test_other_domain_weights_refuse_the_checkpoint() -> None:
    avail, dom = data(0)
    a = sampler(avail, dom, domain_sampling="uniform")
    b = sampler(avail, dom, domain_sampling="weights", domain_weights={"history": 1, "law": 1, "letters": 2})
    with pytest.raises(ConfigError, match="fingerprint"):
        b.load_state_dict(a.state_dict())


def test_domain_errors() -> None:
    avail, dom = data(0)
    with pytest.raises(ConfigError, match="domain_sampling"):
        HybridBatchSampler(avail, LANGS, 16, domain_sampling="uniform")  # no domains in the data
    with pytest.raises(ConfigError, match="domain_weights"):
        sampler(avail, dom, domain_sampling="weights", domain_weights={"law": 1})
    small = dom.copy()
    small[300:] = 0
    small[200:300] = 0
    small[:5] = 2  # only 5 'letters' pairs: a letters batch of 16 is impossible
    with pytest.raises(ConfigError, match="letters"):
        sampler(avail, small, domain_sampling="uniform")
