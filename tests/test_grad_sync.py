"""``hybrid_ray.grad_sync``: when shared-memory averaging applies, and that it averages exactly.

The two-process tests run DeepSpeed's real shared-memory op (built by DeepSpeed on its first CPU
backend start, then cached) in a gloo process group, without Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hybrid_ray import grad_sync
from hybrid_ray.config import load_config
from hybrid_ray.errors import ConfigError
from hybrid_ray.local import free_port

CPU2 = {"use_gpu": False, "zero_stage": 0, "bf16": False, "world": 2, "local_world": 2}


def test_auto_takes_shared_memory_only_where_it_applies() -> None:
    assert grad_sync.wanted("auto", **CPU2)
    assert grad_sync.wanted("shm", **CPU2)
    assert not grad_sync.wanted("gloo", **CPU2)
    assert not grad_sync.wanted("auto", **{**CPU2, "world": 1, "local_world": 1})  # nothing to average
    for change in ({"use_gpu": True}, {"zero_stage": 2}, {"bf16": True}, {"local_world": 1}):
        assert not grad_sync.wanted("auto", **{**CPU2, **change}), change


@pytest.mark.parametrize(("change", "reason"), [
    ({"use_gpu": True}, "GPUs"), ({"zero_stage": 3}, "ZeRO-3"), ({"bf16": True}, "bf16"),
    ({"world": 4, "local_world": 2}, "only 2 of the 4 ranks"),
])
def test_shm_demanded_where_it_cannot_apply_says_why(change: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match="deepspeed.cpu_allreduce") as info:
        grad_sync.wanted("shm", **{**CPU2, **change})
    assert reason in str(info.value)


def test_config_checks_the_mode(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    base = [f"data.path={data}"]
    assert load_config("tiny.yaml", base + ["deepspeed.zero_stage=0"]).deepspeed.cpu_allreduce == "auto"
    with pytest.raises(ConfigError, match="deepspeed.cpu_allreduce"):
        load_config("tiny.yaml", base + ["deepspeed.cpu_allreduce=nccl"])
    with pytest.raises(ConfigError, match="zero_stage=0"):
        load_config("tiny.yaml", base + ["deepspeed.zero_stage=2", "deepspeed.cpu_allreduce=shm"])


def _rank(rank: int, port: int, out: str, mode: str, local_size: bool) -> None:
    import deepspeed
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    os.environ.pop("LOCAL_SIZE", None)
    torch.set_num_threads(1)
    if local_size:
        grad_sync.prepare(2)
    deepspeed.init_distributed(dist_backend="gloo")
    segment_before = grad_sync.segment_path(rank).exists()
    torch.manual_seed(rank)
    params = [torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(300_000)),
              torch.nn.Parameter(torch.randn(3))]
    params[0].grad = torch.randn(5, 7)
    params[1].grad = torch.randn(300_000)  # > the op's 1 MiB naive threshold: its other kernel
    params[2].grad = None  # a weight without a gradient on this step: zeros, on every rank
    try:
        sync = grad_sync.ShmGradSync.start(params, world=2, rank=rank, mode=mode)
    except ConfigError as exc:
        result = {"error": str(exc)}
    else:
        expected = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for e in expected:
            dist.all_reduce(e)  # gloo: the reference sum
            e.mul_(0.5)
        if sync is not None:
            sync()
        result = {"sync": sync is not None,
                  "exact": [p.grad is not None and bool(torch.equal(p.grad, e))
                            for p, e in zip(params, expected, strict=True)]}
    result |= {"segment_before": segment_before, "segment_after": grad_sync.segment_path(rank).exists()}
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    dist.destroy_process_group()


def _spawn(tmp_path: Path, mode: str, local_size: bool) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = str(tmp_path / "result")
    mp.spawn(_rank, args=(free_port(), out, mode, local_size), nprocs=2)
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]


def test_shared_memory_average_equals_gloo_and_leaves_no_segment(tmp_path: Path) -> None:
    """Both ranks average through shared memory; every gradient equals gloo's sum / 2 bit for bit
    (2 ranks: one addition), and DeepSpeed's /dev/shm segments are gone once both have mapped them."""
    for res in _spawn(tmp_path, "auto", local_size=True):
        assert res["segment_before"] and not res["segment_after"], res
        assert res["sync"] and res["exact"] == [True, True, True], res


def test_without_the_segment_auto_falls_back_and_shm_refuses(tmp_path: Path) -> None:
    """No ``LOCAL_SIZE`` at backend start: DeepSpeed maps no shared memory. ``auto`` then keeps
    DeepSpeed's own all-reduce on both ranks; ``shm`` stops with an error naming the setting."""
    for res in _spawn(tmp_path / "auto", "auto", local_size=False):
        assert not res["segment_before"] and res["sync"] is False, res
    for res in _spawn(tmp_path / "shm", "shm", local_size=False):
        assert "deepspeed.cpu_allreduce" in res["error"], res
