"""Keyed pseudo-random permutations of ``[0, n)`` evaluated at any index in O(1).

Why not ``Generator.permutation(n)``: materialising a shuffle costs O(n) time and memory before the
first element can be read, and the sampler needs one per (epoch, stream, round). At 10M pairs x 10
languages that was seconds at every epoch start, on every rank and every resume. A keyed bijection
gives element ``j`` of the shuffle directly, so a batch costs O(batch) whatever ``n`` is.

Construction (Black & Rogaway's *cycle walking* over a balanced Feistel network):

* an *alternating* (unbalanced) Feistel network on ``w = bit_length(n - 1)`` bits is a bijection
  on ``[0, 2**w)`` (so the domain is under ``2n``) for any round function: a round maps
  ``(L: a bits, R: b bits)`` to ``(R, L ^ F(R) mod 2**a)``, and the halves swap widths each round.
  ``F`` is the splitmix64 finaliser of ``(R + key_i)``, with 6 rounds keyed from
  ``numpy.random.SeedSequence`` (the same entropy mixing the rest of the sampler uses);
* cycle walking re-applies the network to outputs ``>= n`` until they land in ``[0, n)``. The
  result is a bijection on ``[0, n)``: following the network's cycle from an in-range start
  always reaches the next in-range element. Expected walk length is ``2**w / n < 2``.

All arithmetic is vectorised uint64 numpy (wrap-around multiplication is intended).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-avalanched 64-bit mixing function."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


class FeistelPermutation:
    """A keyed bijection ``[0, n) -> [0, n)``; ``perm[idx]`` maps an index array in O(len(idx)).

    ``key`` is any sequence of non-negative ints (e.g. ``(seed, epoch, stream, round)``): equal keys
    give equal permutations in every process, different keys independent-looking ones.
    """

    def __init__(self, n: int, key: Sequence[int]) -> None:
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = int(n)
        bits = max(int(self.n - 1).bit_length(), 2)
        self._widths = (bits - bits // 2, bits // 2)  # (left a, right b): swapped every round
        self._keys = np.random.SeedSequence([int(k) for k in key]).generate_state(_ROUNDS, np.uint64)

    def _network(self, x: np.ndarray) -> np.ndarray:
        a, b = self._widths
        for k in self._keys:
            right = x & np.uint64((1 << b) - 1)
            mixed = (x >> np.uint64(b)) ^ (_mix(right + k) & np.uint64((1 << a) - 1))
            x = (right << np.uint64(a)) | mixed
            a, b = b, a
        return x

    def __getitem__(self, idx: np.ndarray | Sequence[int] | int) -> np.ndarray:
        """``perm(idx)`` elementwise, as int64; indices must lie in ``[0, n)``."""
        x = np.asarray(idx, dtype=np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"permutation index out of range [0, {self.n})")
        n = np.uint64(self.n)
        out = self._network(x.astype(np.uint64))
        walk = np.flatnonzero(out >= n)
        while walk.size:  # cycle walking: terminates, since the start itself is in range
            out[walk] = self._network(out[walk])
            walk = walk[out[walk] >= n]
        return out.astype(np.int64)

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Elements ``start..stop-1`` of the shuffled sequence (a batch is one such slice)."""
        return self[np.arange(start, stop, dtype=np.int64)]


class RankSelect:
    """``select(j)`` = position of the ``j``-th True of a bool vector, in O(block) per query.

    The sampler permutes *ranks* within a stream (``[0, n_stream)``) and needs the pair behind a
    rank. Materialising ``flatnonzero(mask)`` is O(n) memory per stream; this keeps one int64
    prefix count per block of ``block`` cells (n/64 entries) and scans one block per query,
    vectorised over a batch.
    """

    def __init__(self, mask: np.ndarray, block: int = 64) -> None:
        mask = np.asarray(mask)
        if mask.ndim != 1 or mask.dtype != np.bool_:
            raise ValueError(f"mask must be a 1-d bool array, got {mask.dtype} {mask.shape}")
        self.mask, self.block = mask, int(block)
        n, k = mask.shape[0], self.block
        full = n // k
        counts = mask[: full * k].reshape(full, k).sum(axis=1, dtype=np.int64)
        if n % k:
            counts = np.append(counts, int(mask[full * k :].sum()))
        self._before = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.count = int(self._before[-1])

    def __call__(self, ranks: np.ndarray) -> np.ndarray:
        r = np.asarray(ranks, dtype=np.int64)
        if r.size and (r.min() < 0 or r.max() >= self.count):
            raise IndexError(f"rank out of range [0, {self.count})")
        blk = np.searchsorted(self._before, r, side="right") - 1
        within = r - self._before[blk]
        cells = blk[:, None] * self.block + np.arange(self.block)
        n = self.mask.shape[0]
        bits = self.mask[np.minimum(cells, n - 1)] & (cells < n)
        # first cell of the block where the running count of Trues exceeds `within`
        pos = np.argmax(np.cumsum(bits, axis=1) > within[:, None], axis=1)
        return blk * self.block + pos
