"""Gradient averaging through shared memory for ZeRO-0 ranks that share one CPU machine.

Why not DeepSpeed's own ZeRO-0 all-reduce on CPU: it copies every gradient into a flat bucket,
sends it through gloo's TCP loopback, scales it and copies it back. For multilingual-e5-small's 21M
trained weights (82 MB) on 2 cores that is ~130 ms of a ~1 s step; gloo alone takes 60-70 ms, and
even a 37 KB all-reduce costs 0.8 ms. DeepSpeed ships a shared-memory all-reduce for CPU ranks on
one machine (``deepspeed_shm_comm``, the op its CPU inference engine uses; DeepSpeed builds it when
it initialises the communication backend on CPU). It sums in place with vector kernels: 27 ms for the
same 82 MB, 13 us for small tensors, and no flat-bucket copies when it runs on each gradient
(``bench/results/train_throughput.md``).

The sum is the same as DeepSpeed's: every rank adds the ranks' values, then scales by ``1 / world``
(DeepSpeed's default post-scaling). With 2 ranks the result is bitwise identical to DeepSpeed's
gloo path (a + b == b + a); with more, the order of the additions may differ in the last bit.

How DeepSpeed decides to use shared memory: its op maps the ranks' segments at backend start-up only
when ``LOCAL_SIZE`` equals the world size (all ranks on this machine), naming them after
``MASTER_ADDR`` and ``MASTER_PORT`` (so concurrent runs never share one). :func:`prepare` sets that
variable before ``deepspeed.init_distributed``; :func:`ShmGradSync.start` then checks, on every rank,
that the segment exists, agrees with the other ranks (all or none use it, or a collective would
hang), and removes the segment's name from ``/dev/shm`` once every rank has mapped it: DeepSpeed
never unlinks it, and each run would otherwise leave 66 MB per rank in memory-backed ``/dev/shm``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from hybrid_ray.errors import ConfigError

MODES = ("auto", "shm", "gloo")
SHM_DIR = Path("/dev/shm")
_ENV = "LOCAL_SIZE"  # read by DeepSpeed's shm op at backend start-up
_PREFIX = "deepspeed_allreduce_buffer"  # DeepSpeed's segment name: <prefix>_<uid>_<addr>_<port>_<rank>


def wanted(mode: str, *, use_gpu: bool, zero_stage: int, bf16: bool, world: int, local_world: int) -> bool:
    """Whether this run averages gradients through shared memory (``deepspeed.cpu_allreduce``).

    ``auto`` takes it whenever it applies: CPU, ZeRO-0, fp32 gradients, more than one rank, all of
    them on this machine. ``shm`` demands it and says why it cannot apply; ``gloo`` keeps
    DeepSpeed's own all-reduce.
    """
    if mode not in MODES:
        raise ConfigError(f"must be one of {', '.join(MODES)}", key="deepspeed.cpu_allreduce", value=mode)
    if mode == "gloo" or world <= 1:
        return False
    reasons = []
    if use_gpu:
        reasons.append("the run is on GPUs (NCCL all-reduces there)")
    if zero_stage != 0:
        reasons.append(f"ZeRO-{zero_stage} reduces gradients inside DeepSpeed's own hooks (needs zero_stage 0)")
    if bf16:
        reasons.append("bf16 gradients go through DeepSpeed's bf16 optimizer (needs fp32)")
    if local_world != world:
        reasons.append(f"only {local_world} of the {world} ranks are on this machine")
    if reasons and mode == "shm":
        raise ConfigError("shared-memory gradient averaging does not apply: " + "; ".join(reasons),
                          key="deepspeed.cpu_allreduce", value=mode)
    return not reasons


def prepare(world: int) -> None:
    """Before ``deepspeed.init_distributed``: let DeepSpeed's shm op map all ranks' segments."""
    os.environ[_ENV] = str(world)


def segment_path(rank: int) -> Path:
    """The ``/dev/shm`` file DeepSpeed's op created for ``rank`` of this process group."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"{_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


class ShmGradSync:
    """Average the gradients of ``params`` over all ranks in place (call after backward, before step)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], world: int) -> None:
        self.params, self.world = list(params), int(world)
        self._op = torch.ops.deepspeed.inference_all_reduce_

    @classmethod
    def start(cls, params: Sequence[torch.nn.Parameter], world: int, rank: int, mode: str) -> ShmGradSync | None:
        """After ``deepspeed.init_distributed``: the syncer when every rank has DeepSpeed's shm
        segment mapped, else ``None`` (``auto``) or a ConfigError (``shm``). Collective: all ranks call it."""
        import torch.distributed as dist

        mine = segment_path(rank)
        ready = mine.exists() and hasattr(torch.ops.deepspeed, "inference_all_reduce_") and _vector_level() >= 1
        flag = torch.tensor([1 if ready else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # one rank without it: nobody uses it
        dist.barrier()  # every rank has opened every other rank's segment by now
        mine.unlink(missing_ok=True)
        if int(flag) == 1:
            return cls(params, world)
        if mode == "shm":
            raise ConfigError(
                "DeepSpeed's shared-memory all-reduce is not available on every rank (its op "
                "deepspeed_shm_comm did not build or the CPU lacks AVX2; see the worker log)",
                key="deepspeed.cpu_allreduce", value=mode)
        return None

    def __call__(self) -> None:
        scale = 1.0 / self.world
        for p in self.params:
            if p.grad is None:  # every rank must all-reduce the same tensors in the same order
                p.grad = torch.zeros_like(p)
            grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
            self._op(grad)
            grad.mul_(scale)
            if grad is not p.grad:
                p.grad.copy_(grad)


def _vector_level() -> int:
    """The shm kernels' usable ISA level (DeepSpeed: 1 = AVX2 = fp32 kernels, 2 = AVX-512BW)."""
    try:
        from deepspeed.comm import comm

        return int(getattr(comm.cdb, "shm_vector_kernel_level", 0) or 0)
    except Exception:  # noqa: BLE001 - no backend, no level
        return 0
