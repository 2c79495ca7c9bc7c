"""Cluster-wide hybrid batch sampler: the heart of hybrid batch training.

Each *global* batch of ``B`` parallel pairs is, with probability ``alpha``, monolingual
(X-X-mono: query and passage of every pair in ONE language, drawn per batch from the language
distribution ``p``) and otherwise cross-lingual (X-Y: every pair gets its own query language and a
*different* passage language). ``alpha=1`` is the paper's X-X-mono baseline, ``alpha=0`` is X-Y.

Why the design looks like this
------------------------------
* **No communication.** Every rank derives the same global batch from ``(seed, epoch, step)`` alone
  and keeps its contiguous ``B / world_size`` slice, so the batch *kind* (mono vs cross) is the
  same on every rank of a step: the contrastive loss gathers passages across ranks, and a mono
  batch is only monolingual if all ranks agree on it.
* **O(batch) per batch, O(1) epoch start.** An epoch *plan* is three vectors of length ``steps``
  (kind, stream, offset into the stream), computed vectorised in milliseconds. A stream is the list
  of pairs a batch may draw from: one per language (pairs that exist in it) plus one cross stream
  (pairs with at least two usable languages). Batch ``k`` of a stream is slice ``k`` of a keyed
  permutation of the stream ("round" ``k // batches_per_round``). A batch never straddles two
  rounds, so a batch never holds the same pair twice. The permutation is a cycle-walking Feistel
  bijection (:mod:`hybrid_ray.permutation`) evaluated only at the batch's ``B`` positions, and a
  rank/select table maps a position in the stream to its pair, so nothing of size ``n`` is built
  per epoch, stream or round: the first batch of a stream costs the same as any other.
* **Same number of batches for every world size**: ``steps_per_epoch`` does not depend on the
  world size; each step yields exactly one slice per rank.
* **Resume** is exact: the plan and every permutation are pure functions of the seed, so
  ``iter_epoch(epoch, start_step)`` reproduces the rest of an epoch bit for bit.
* **Domains** (optional, ``domain_of`` + ``domain_sampling``): each step also draws ONE domain
  from the domain distribution (uniform / temperature / weights, like languages), from its own
  random stream, so the batch-kind and language draws are those of the same seed without domains
  and ``P(domain)`` does not depend on alpha. The streams are then split by domain ((language,
  domain) for mono batches, domain for cross ones), so a batch is domain-pure: in-batch negatives
  come from the same genre when domain sampling is on (per-row domains would let a batch straddle
  two rounds of a stream and repeat a pair). Without domain sampling nothing changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hybrid_ray.errors import ConfigError
from hybrid_ray.permutation import FeistelPermutation, RankSelect

BatchKind = Literal["mono", "cross"]
LangSampling = Literal["uniform", "temperature", "weights"]
DomainSampling = Literal["none", "uniform", "temperature", "weights"]

# RNG domain tags: separate, independent random streams derived from one user seed.
_TAG_PLAN, _TAG_MONO_PERM, _TAG_CROSS_PERM, _TAG_CROSS_LANGS, _TAG_DOMAIN, _TAG_DOMAIN_PERM = 0, 1, 2, 3, 4, 5
# Version of the stream permutation, part of the fingerprint: a checkpoint written by a sampler
# with another permutation (v0 was a materialised numpy shuffle) must not resume silently.
_PERM_VERSION = "feistel-v1"


@dataclass(frozen=True, eq=False)
class GlobalBatch:
    """One batch of parallel pairs: row ``i`` is (pair ``pair_idx[i]``, query language
    ``q_lang[i]``, passage language ``p_lang[i]``); languages are indices into ``langs``.

    ``epoch``/``step`` say where it came from (for logging and resume checks).
    """

    kind: BatchKind
    pair_idx: np.ndarray  # int64 [b]
    q_lang: np.ndarray  # int64 [b]
    p_lang: np.ndarray  # int64 [b]
    epoch: int = -1
    step: int = -1

    def __len__(self) -> int:
        return int(self.pair_idx.shape[0])

    def equals(self, other: GlobalBatch) -> bool:
        """Value equality (dataclass ``==`` is ambiguous on numpy arrays)."""
        return (
            self.kind == other.kind
            and np.array_equal(self.pair_idx, other.pair_idx)
            and np.array_equal(self.q_lang, other.q_lang)
            and np.array_equal(self.p_lang, other.p_lang)
        )


def rank_slice(batch: GlobalBatch, rank: int, world_size: int) -> GlobalBatch:
    """The contiguous, disjoint ``len(batch) / world_size`` slice of ``batch`` owned by ``rank``.

    Contiguous slices keep the layout the loss relies on: rank ``r``'s rows are global rows
    ``[r*b, (r+1)*b)``. Raises ConfigError when the batch does not split evenly, because unequal
    local batches would break the cross-rank all_gather of the loss.
    """
    n = len(batch)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, {world_size})", key="rank", value=rank)
    if n % world_size:
        raise ConfigError(
            f"global batch size {n} is not divisible by the world size {world_size}",
            key="global_batch_size", value=n,
        )
    b = n // world_size
    s = slice(rank * b, (rank + 1) * b)
    return GlobalBatch(
        batch.kind, batch.pair_idx[s], batch.q_lang[s], batch.p_lang[s], batch.epoch, batch.step
    )


def language_distribution(
    counts: np.ndarray,
    langs: Sequence[str],
    lang_sampling: LangSampling = "uniform",
    lang_temperature: float = 1.0,
    lang_weights: Mapping[str, float] | None = None,
    what: str = "lang",
) -> np.ndarray:
    """Probability of each language being picked (a mono batch's language, a cross query's).

    ``uniform`` is the paper's choice; ``temperature`` is the XLM-R/mT5 rule ``p ∝ n^(1/T)``
    (T=1: proportional to data, T→∞: uniform) that up-samples small languages; ``weights`` lets
    the user say exactly. Languages without any pair always get probability 0. ``what="domain"``
    applies the same rule to domains (error keys ``domain_*``).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if lang_sampling == "uniform":
        w = (counts > 0).astype(np.float64)
    elif lang_sampling == "temperature":
        if not lang_temperature > 0:
            raise ConfigError("must be > 0", key=f"{what}_temperature", value=lang_temperature)
        w = np.where(counts > 0, counts ** (1.0 / lang_temperature), 0.0)
    elif lang_sampling == "weights":
        if not lang_weights:
            raise ConfigError(f"{what}_sampling='weights' needs {what}_weights", key=f"{what}_weights")
        unknown = sorted(set(lang_weights) - set(langs))
        missing = [lang for lang in langs if lang not in lang_weights]
        if unknown or missing:
            raise ConfigError(
                f"must give a weight for exactly the data's {what}s {list(langs)}; "
                f"unknown {unknown}, missing {missing}",
                key=f"{what}_weights", value=dict(lang_weights),
            )
        w = np.array([float(lang_weights[lang]) for lang in langs])
        if (w < 0).any() or not np.isfinite(w).all():
            raise ConfigError("weights must be finite and >= 0", key=f"{what}_weights", value=dict(lang_weights))
        w = np.where(counts > 0, w, 0.0)
    else:
        raise ConfigError(
            "expected 'uniform', 'temperature' or 'weights'", key=f"{what}_sampling", value=lang_sampling
        )
    total = w.sum()
    if total <= 0:
        raise ConfigError(f"every {what} has probability 0", key=f"{what}_sampling", value=lang_sampling)
    return w / total


class HybridBatchSampler:
    """Deterministic, communication-free hybrid (mono / cross) global batch sampler.

    Parameters
    ----------
    available: bool ``(n_pairs, n_langs)``; ``available[i, l]`` says pair ``i`` exists in ``langs[l]``.
    global_batch_size: ``B``, pairs per optimizer step over the whole cluster.
    alpha: probability that a batch is monolingual.
    steps_per_epoch: default ``n_pairs // B``.
    """

    def __init__(
        self,
        available: np.ndarray,
        langs: Sequence[str],
        global_batch_size: int,
        alpha: float = 0.5,
        seed: int = 0,
        lang_sampling: LangSampling = "uniform",
        lang_temperature: float = 1.0,
        lang_weights: Mapping[str, float] | None = None,
        steps_per_epoch: int | None = None,
        domain_of: np.ndarray | None = None,
        domains: Sequence[str] | None = None,
        domain_sampling: DomainSampling = "none",
        domain_temperature: float = 1.0,
        domain_weights: Mapping[str, float] | None = None,
    ) -> None:
        available = np.asarray(available)
        if available.ndim != 2 or available.dtype != np.bool_:
            raise ConfigError(
                f"available must be a 2-d bool matrix (n_pairs, n_langs), got {available.dtype} "
                f"{available.shape}", key="available",
            )
        self.langs = list(langs)
        if available.shape[1] != len(self.langs):
            raise ConfigError(
                f"available has {available.shape[1]} columns but {len(self.langs)} languages were given",
                key="langs", value=self.langs,
            )
        if int(global_batch_size) < 1:
            raise ConfigError("must be >= 1", key="global_batch_size", value=global_batch_size)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError("must be in [0, 1]", key="alpha", value=alpha)
        if int(seed) < 0:
            raise ConfigError("must be >= 0", key="seed", value=seed)
        self.available = available
        self.n_pairs, self.n_langs = available.shape
        self.global_batch_size = B = int(global_batch_size)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.lang_sampling = lang_sampling
        self.lang_temperature = float(lang_temperature)
        self.lang_weights = dict(lang_weights) if lang_weights else None
        self._init_domains(domain_of, domains, domain_sampling, domain_temperature, domain_weights)

        self.lang_counts = available.sum(axis=0).astype(np.int64)
        self.lang_probs = language_distribution(
            self.lang_counts, self.langs, lang_sampling, lang_temperature, lang_weights
        )
        usable = self.lang_probs > 0
        # Cross stream: pairs with >= 2 usable languages (a query AND a different passage language).
        # Chunked so the temporaries stay small next to a memory-mapped ``available``.
        self._cross_ok = np.empty(self.n_pairs, dtype=bool)
        for a in range(0, self.n_pairs, 1 << 18):
            chunk = available[a : a + (1 << 18)]
            self._cross_ok[a : a + chunk.shape[0]] = (chunk & usable).sum(axis=1, dtype=np.int32) >= 2
        self.n_cross = int(self._cross_ok.sum())
        # Log-probabilities for the Gumbel-top-2 language choice of cross pairs.
        with np.errstate(divide="ignore"):
            self._log_p = np.log(self.lang_probs)

        if self.alpha > 0:
            small = [
                f"{self.langs[i]} ({int(self.lang_counts[i])} pairs)"
                for i in np.flatnonzero(usable) if self.lang_counts[i] < B
            ]
            if small:
                raise ConfigError(
                    f"a monolingual batch needs >= global_batch_size={B} pairs per language; too few in "
                    f"{', '.join(small)}. Lower the batch size, or give those languages weight 0 "
                    "(lang_sampling='weights').", key="global_batch_size", value=B,
                )
        if self.alpha < 1 and self.n_cross < B:
            raise ConfigError(
                f"a cross-lingual batch needs >= global_batch_size={B} pairs available in two or more "
                f"(sampled) languages; found {self.n_cross}. Use alpha=1 (monolingual only) or a smaller "
                "batch.", key="alpha", value=self.alpha,
            )
        # Stream sizes: streams 0..L-1 are the languages, stream L is cross (with domain sampling:
        # stream l*D + d is language l in domain d, stream L*D + d is cross in domain d).
        masks = self._stream_masks()
        self._stream_sizes = np.array([int(m.sum()) for m in masks], dtype=np.int64)
        self._check_domain_streams()
        self._per_round = np.maximum(self._stream_sizes // B, 1)

        if steps_per_epoch is None:
            steps_per_epoch = self.n_pairs // B
        if int(steps_per_epoch) < 1:
            raise ConfigError(
                f"an epoch has no step ({self.n_pairs} pairs, batch {B})", key="steps_per_epoch",
                value=steps_per_epoch,
            )
        self.steps_per_epoch = int(steps_per_epoch)
        # Position-in-stream -> pair tables (one int64 per 64 pairs per stream), built once.
        self._select = [RankSelect(m) for m in masks]
        self._plan_cache: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._fingerprint: str | None = None
        self._epoch = 0
        self._step = 0

    # --------------------------------------------------------------- domains
    def _init_domains(self, domain_of, domains, sampling: str, temperature: float, weights) -> None:
        """Domain distribution (None when domain sampling is off) and the per-pair domain index."""
        self.domain_sampling = sampling
        self.domain_temperature = float(temperature)
        self.domain_weights = dict(weights) if weights else None
        self.domains = list(domains) if domains is not None else []
        self.domain_of = None if domain_of is None else np.asarray(domain_of, dtype=np.int64)
        self.domain_probs: np.ndarray | None = None
        if sampling == "none":
            return
        if self.domain_of is None or not self.domains:
            raise ConfigError("domain sampling needs data with a 'domain' column", key="domain_sampling",
                              value=sampling)
        if self.domain_of.shape != (self.n_pairs,):
            raise ConfigError(f"domain_of must have one entry per pair ({self.n_pairs}), got "
                              f"{self.domain_of.shape}", key="domain_of")
        counts = np.bincount(self.domain_of, minlength=len(self.domains))
        self.domain_counts = counts
        self.domain_probs = language_distribution(counts, self.domains, sampling, temperature, weights,  # type: ignore[arg-type]
                                                  what="domain")

    def _stream_masks(self) -> list[np.ndarray]:
        """Which pairs each stream may draw (bool per pair), in stream-id order."""
        langs = [self.available[:, lang] for lang in range(self.n_langs)]
        if self.domain_probs is None:
            return [*langs, self._cross_ok]
        in_dom = [self.domain_of == d for d in range(len(self.domains))]
        return [m & dm for m in langs for dm in in_dom] + [self._cross_ok & dm for dm in in_dom]

    def _check_domain_streams(self) -> None:
        """Every (language, domain) / (cross, domain) stream a batch may come from holds a batch."""
        if self.domain_probs is None:
            return
        B, D = self.global_batch_size, len(self.domains)
        small = []
        for d in np.flatnonzero(self.domain_probs > 0):
            if self.alpha > 0:
                small += [f"{self.langs[lang]}/{self.domains[d]} ({int(self._stream_sizes[lang * D + d])} pairs)"
                          for lang in np.flatnonzero(self.lang_probs > 0)
                          if self._stream_sizes[lang * D + d] < B]
            if self.alpha < 1 and self._stream_sizes[self.n_langs * D + d] < B:
                small.append(f"cross/{self.domains[d]} ({int(self._stream_sizes[self.n_langs * D + d])} pairs)")
        if small:
            raise ConfigError(
                f"a domain-pure batch needs >= global_batch_size={B} pairs per (language, domain); too few "
                f"in {', '.join(small[:8])}. Give those domains weight 0 (domain_sampling='weights') or "
                "lower the batch size.", key="domain_sampling", value=self.domain_sampling,
            )

    def batch_domain_counts(self, batch: GlobalBatch) -> dict[str, int]:
        """The batch's domain mix (domain -> rows), for logging; empty without domains."""
        if self.domain_of is None or not self.domains:
            return {}
        counts = np.bincount(self.domain_of[batch.pair_idx], minlength=len(self.domains))
        return {self.domains[d]: int(c) for d, c in enumerate(counts) if c}

    # ------------------------------------------------------------------ plan
    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *parts])

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(is_mono[bool], stream[int], offset[int])`` per step of ``epoch`` (cached, O(steps))."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        steps = self.steps_per_epoch
        rng = self._rng(epoch, _TAG_PLAN)
        is_mono = rng.random(steps) < self.alpha
        mono_lang = rng.choice(self.n_langs, size=steps, p=self.lang_probs)
        if self.domain_probs is None:
            stream = np.where(is_mono, mono_lang, self.n_langs).astype(np.int64)
        else:  # an independent draw: the kind / language draws above are unchanged
            D = len(self.domains)
            dom = self._rng(epoch, _TAG_DOMAIN).choice(D, size=steps, p=self.domain_probs)
            stream = np.where(is_mono, mono_lang * D + dom, self.n_langs * D + dom).astype(np.int64)
        # offset[t] = number of earlier steps that drew from the same stream (cumulative count).
        order = np.argsort(stream, kind="stable")
        sorted_stream = stream[order]
        first = np.searchsorted(sorted_stream, np.arange(len(self._stream_sizes)))
        offset = np.empty(steps, dtype=np.int64)
        offset[order] = np.arange(steps) - first[sorted_stream]
        plan = (is_mono, stream, offset)
        self._plan_cache = (epoch, plan)
        return plan

    def stream_pairs(self, epoch: int, stream: int, rnd: int, start: int, stop: int) -> np.ndarray:
        """Pairs at positions ``start..stop-1`` of ``stream``'s permutation for round ``rnd``.

        O(stop - start) whatever the stream size: the keyed bijection is evaluated only there.
        """
        if self.domain_probs is not None:
            tag: tuple[int, ...] = (_TAG_DOMAIN_PERM, stream)
        else:
            tag = (_TAG_MONO_PERM, stream) if stream < self.n_langs else (_TAG_CROSS_PERM, 0)
        perm = FeistelPermutation(int(self._stream_sizes[stream]), (self.seed, epoch, *tag, rnd))
        return self._select[stream](perm.slice(start, stop))

    # ----------------------------------------------------------------- batch
    def batch(self, epoch: int, step: int) -> GlobalBatch:
        """The global batch of ``(epoch, step)``: identical on every rank, no communication."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside [0, {self.steps_per_epoch})")
        is_mono, stream, offset = self.epoch_plan(epoch)
        s, k = int(stream[step]), int(offset[step])
        B = self.global_batch_size
        per_round = int(self._per_round[s])
        rnd, j = divmod(k, per_round)
        pair_idx = self.stream_pairs(epoch, s, rnd, j * B, (j + 1) * B)
        if is_mono[step]:
            lang = np.full(B, s // len(self.domains) if self.domain_probs is not None else s, dtype=np.int64)
            return GlobalBatch("mono", pair_idx, lang, lang.copy(), epoch, step)
        q_lang, p_lang = self._cross_langs(epoch, step, pair_idx)
        return GlobalBatch("cross", pair_idx, q_lang, p_lang, epoch, step)

    def _cross_langs(self, epoch: int, step: int, pair_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gumbel-top-2 over log p masked by availability: an ordered draw of two *distinct*
        languages per pair without replacement, so ``q_lang ~ p`` (restricted to the pair's
        languages) and ``p_lang != q_lang``. O(b * n_langs), vectorised."""
        keys = self._rng(epoch, _TAG_CROSS_LANGS, step).gumbel(size=(pair_idx.shape[0], self.n_langs))
        keys += self._log_p
        keys[~self.available[pair_idx]] = -np.inf
        rows = np.arange(keys.shape[0])
        first = keys.argmax(axis=1)
        keys[rows, first] = -np.inf
        second = keys.argmax(axis=1)
        return first.astype(np.int64), second.astype(np.int64)

    # ------------------------------------------------------------- iteration
    def __len__(self) -> int:
        return self.steps_per_epoch

    def iter_epoch(
        self, epoch: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[GlobalBatch]:
        """This rank's slices of ``epoch`` from ``start_step`` on (deterministic mid-epoch resume).

        After yielding step ``t`` the sampler state is ``(epoch, t + 1)``: a checkpoint taken after
        training on the batch resumes at the next one.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ConfigError(f"outside [0, {self.steps_per_epoch}]", key="start_step", value=start_step)
        if world_size < 1 or self.global_batch_size % world_size:
            raise ConfigError(
                f"global batch size {self.global_batch_size} is not divisible by the world size "
                f"{world_size}", key="global_batch_size", value=self.global_batch_size,
            )
        # Set eagerly (not on the first next()): a checkpoint taken before any batch was consumed
        # must still say which epoch we are in.
        self._epoch, self._step = epoch, start_step
        return self._iter(epoch, start_step, rank, world_size)

    def _iter(self, epoch: int, start_step: int, rank: int, world_size: int) -> Iterator[GlobalBatch]:
        for step in range(start_step, self.steps_per_epoch):
            batch = rank_slice(self.batch(epoch, step), rank, world_size)
            self._epoch, self._step = epoch, step + 1
            yield batch

    def iter_from_state(self, num_epochs: int, rank: int = 0, world_size: int = 1) -> Iterator[GlobalBatch]:
        """Continue from the current state (see ``load_state_dict``) until ``num_epochs`` are done."""
        epoch, step = self._epoch, self._step
        if step >= self.steps_per_epoch:
            epoch, step = epoch + 1, 0
        while epoch < num_epochs:
            yield from self.iter_epoch(epoch, step, rank, world_size)
            epoch, step = epoch + 1, 0

    # ----------------------------------------------------------------- state
    def fingerprint(self) -> str:
        """Hash of everything that determines the batch sequence; resuming with another config
        would silently change the data order, so ``load_state_dict`` refuses it."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        h.update(json.dumps([
            self.langs, self.global_batch_size, self.alpha, self.seed, self.lang_sampling,
            self.lang_temperature, self.lang_weights, self.steps_per_epoch, self.n_pairs, _PERM_VERSION,
        ] + ([self.domains, self.domain_sampling, self.domain_temperature, self.domain_weights]
             if self.domain_probs is not None else []), sort_keys=True, default=str).encode())
        h.update(np.packbits(self.available).tobytes())
        if self.domain_probs is not None:
            h.update(np.ascontiguousarray(self.domain_of, dtype=np.int64).tobytes())
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "step": self._step, "fingerprint": self.fingerprint()}

    def state_after(self, batch: GlobalBatch) -> dict[str, Any]:
        """The state that resumes right after ``batch`` (what a checkpoint taken after training on
        it must hold). Unlike ``state_dict`` it does not depend on how far an iterator has run
        ahead (``hybrid_ray.prefetch``)."""
        return {"epoch": int(batch.epoch), "step": int(batch.step) + 1, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        fp = state.get("fingerprint")
        if strict and fp is not None and fp != self.fingerprint():
            raise ConfigError(
                "the checkpoint's sampler was built from other data or settings; resuming would not "
                "reproduce the batch order (pass strict=False to accept)",
                key="sampler.fingerprint", value=fp,
            )
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
