"""Ray Train + DeepSpeed ZeRO training on 2 CPU workers with the tiny model.

Proves: the loss falls; what ``ray.train.report`` carries; what a checkpoint holds (every rank's
DeepSpeed shard, the sampler position, a loadable HF encoder); a run started from a checkpoint
(``--resume-from``) and a worker killed mid-run both continue with the uninterrupted run's batches
*and* losses, on both ranks, so the weights, optimizer and LR schedule came back, not just the
sample stream; the resolved config is recorded; ZeRO 0/1/3 train and export; a bad config (also
inside a YAML file) fails before any worker starts.

Determinism: the tiny BERT has dropout 0.1. The loop re-seeds torch from (seed, step, rank) before
every step, gloo sums two ranks in a fixed order and each CPU worker runs one thread, so a resumed
step repeats the reference step exactly in practice; the comparison still allows a relative 1e-5
so that a different BLAS/thread setup cannot make it flaky. Losing the optimizer state or the
weights moves the losses by orders of magnitude more (see LOSS_TOL).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from hybrid_ray.config import TrainConfig, load_config, to_dict
from hybrid_ray.data.pairs import write_pairs
from hybrid_ray.errors import ConfigError
from hybrid_ray.hooks import BatchTrace
from hybrid_ray.testing import CrashOnce, signature_pairs

LANGS = ["de", "en", "es"]
LOSS_TOL = {"rel": 1e-5, "abs": 1e-6}


def _pairs(n: int = 48, seed: int = 0) -> pa.Table:
    return signature_pairs(n, seed, tuple(LANGS))


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train-data") / "pairs.parquet"
    write_pairs(_pairs(), path)
    return path


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from hybrid_ray.local import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _overrides(data_path: Path, tmp: Path, name: str, *extra: str) -> list[str]:
    return [f"data.path={data_path}", f"run.storage_path={tmp}", f"run.name={name}", *extra]


def _cfg(data_path: Path, tmp: Path, name: str, *extra: str) -> TrainConfig:
    return load_config("tiny.yaml", _overrides(data_path, tmp, name, *extra))


def _tracer(cfg: TrainConfig) -> BatchTrace:
    """The per-rank batch trace of a run (a step hook, not a config key)."""
    return BatchTrace(cfg.run.run_dir / "trace")


def _trace(cfg: TrainConfig, rank: int = 0) -> list[dict]:
    return _tracer(cfg).read(rank)


def _reports(cfg: TrainConfig) -> list[dict]:
    from hybrid_ray.train import METRICS_LOG

    path = cfg.run.run_dir / METRICS_LOG
    return [json.loads(line) for line in path.read_text().splitlines()]


def _init_weights() -> dict[str, torch.Tensor]:
    from hybrid_ray.testing import tiny_encoder

    return {k: v.clone() for k, v in tiny_encoder().model.state_dict().items()}


def _check_exported_encoder(path: Path) -> None:
    """Loads as a DualEncoder, same shapes as the init (ZeRO-3 gathered, not empty partitions),
    finite, and trained: the transformer weights moved away from the init."""
    from hybrid_ray.modeling.encoder import DualEncoder

    enc = DualEncoder.from_pretrained(path)
    got, init = enc.model.state_dict(), _init_weights()
    assert got.keys() == init.keys()
    for key, value in got.items():
        assert value.shape == init[key].shape, key
        assert torch.isfinite(value).all(), key
    moved = [k for k in got if "encoder.layer" in k and k.endswith("weight")
             and (got[k] - init[k]).abs().max() > 1e-5]
    layer_weights = [k for k in got if "encoder.layer" in k and k.endswith("weight")]
    assert len(moved) == len(layer_weights), sorted(set(layer_weights) - set(moved))
    emb = enc.encode(["hello world", "the cat"], "query", batch_size=2)
    assert emb.shape == (2, 32)


def _check_checkpoint(ckpt: Path, *, stage: int, world: int, global_step: int, trace0: list[dict]) -> None:
    """A reported checkpoint: every rank's DeepSpeed shard, the sampler position, the encoder."""
    from hybrid_ray.train_loop import CHECKPOINT_STATE, DS_DIR, DS_TAG, ENCODER_DIR

    ds = ckpt / DS_DIR / DS_TAG
    files = {p.name for p in ds.iterdir()}
    if stage == 3:  # parameters are partitioned too: one model shard per rank
        expected = {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)}
    else:
        expected = {"mp_rank_00_model_states.pt"}
    if stage >= 1:  # optimizer state partitioned: one shard per rank
        expected |= {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)}
    assert expected <= files, (sorted(files), sorted(expected))
    if stage == 0:  # plain DeepSpeed: the whole optimizer state sits with the model states
        states = torch.load(ds / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        assert states["optimizer"] is not None and states["lr_scheduler"] is not None

    state = json.loads((ckpt / CHECKPOINT_STATE).read_text())
    assert state["global_step"] == global_step
    last = next(r for r in trace0 if r["global_step"] == global_step)
    # The sampler resumes at the batch after the last one trained on.
    assert (state["sampler"]["epoch"], state["sampler"]["step"]) == (last["epoch"], last["step"] + 1)
    assert state["sampler"]["fingerprint"]
    _check_exported_encoder(ckpt / ENCODER_DIR)


# --------------------------------------------------------------------------- no workers
def test_bad_config_fails_before_workers(data_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deepspeed.zero_stage"):
        load_config("tiny.yaml", [f"data.path={data_path}", "deepspeed.zero_stage=4"])
    with pytest.raises(ConfigError, match="optim.global_batch_size"):
        load_config("tiny.yaml", [f"data.path={data_path}", "optim.global_batch_size=7"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config("tiny.yaml", [f"data.path={tmp_path / 'nope.parquet'}"])
    with pytest.raises(ConfigError, match="optim.bogus"):
        load_config("tiny.yaml", [f"data.path={data_path}", "optim.bogus=1"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config("tiny.yaml", [])
    with pytest.raises(ConfigError, match="run.resume_from"):
        load_config("tiny.yaml", [f"data.path={data_path}", f"run.resume_from={tmp_path / 'no-ckpt'}"])
    with pytest.raises(ConfigError, match="run.resume_from"):  # a directory, but not a checkpoint
        load_config("tiny.yaml", [f"data.path={data_path}", f"run.resume_from={tmp_path}"])


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("optim:\n  bogus: 1\n", "optim.bogus"),
        ("sampler:\n  alpha: 0.5\n  alpah: 0.3\n", "sampler.alpah"),
        ("trainer:\n  epochs: 3\n", "trainer"),
    ],
)
def test_unknown_key_in_yaml_fails_before_workers(
    data_path: Path, tmp_path: Path, yaml_text: str, key: str
) -> None:
    from hybrid_ray.train import main

    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(f"data:\n  path: {data_path}\nmodel:\n  name_or_path: tiny\n{yaml_text}")
    with pytest.raises(ConfigError, match=rf"'{key}'") as err:
        load_config(cfg_file)
    assert str(cfg_file) in str(err.value)
    # The driver stops before it starts Ray or writes anything.
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        main(["--config", str(cfg_file), f"run.storage_path={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_resume_from_reaches_the_workers_without_deprecated_api(data_path: Path, tmp_path: Path) -> None:
    """Train V2 raises on ``TorchTrainer(resume_from_checkpoint=...)``; the path goes via the config."""
    from hybrid_ray.train import build_trainer

    ckpt = tmp_path / "ckpt"
    (ckpt / "deepspeed").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    cfg = _cfg(data_path, tmp_path, "r")
    trainer = build_trainer(cfg, resume_from=str(ckpt))
    assert trainer.train_loop_config["cfg"].run.resume_from == str(ckpt)
    assert cfg.run.resume_from is None  # the caller's config is not modified
    via_cfg = load_config("tiny.yaml", [f"data.path={data_path}", f"run.resume_from={ckpt}"])
    assert build_trainer(via_cfg).train_loop_config["cfg"].run.resume_from == str(ckpt)


# --------------------------------------------------------------------------- Ray Train runs
@pytest.fixture(scope="module")
def ref_run(data_path: Path, tmp_path_factory, ray_local) -> dict:
    """The uninterrupted reference: ZeRO-2, 24 steps, checkpoints at 8/16/24 (all kept), a metrics
    report every log_every=4 steps (``run.report_every_s=0``; the default spaces them by time)."""
    from hybrid_ray.train import run_training

    tmp = tmp_path_factory.mktemp("ref")
    cfg = _cfg(data_path, tmp, "ref", "run.num_to_keep=3", "run.report_every_s=0")
    result, exported = run_training(cfg, step_hooks=[_tracer(cfg)])
    return {"cfg": cfg, "result": result, "exported": exported,
            "trace": [_trace(cfg, 0), _trace(cfg, 1)], "reports": _reports(cfg)}


def test_zero2_loss_falls_and_ranks_split_the_batch(ref_run: dict) -> None:
    ref, ref1 = ref_run["trace"]
    assert [r["global_step"] for r in ref] == list(range(1, 25))
    first = sum(r["loss"] for r in ref[:4]) / 4
    last = sum(r["loss"] for r in ref[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    exported = ref_run["exported"]
    assert (exported / "config.json").exists() and (exported / "hybrid_ray_encoder.json").exists()
    _check_exported_encoder(exported)
    # Both ranks trained on disjoint halves of the same global batches.
    for a, b in zip(ref, ref1, strict=True):
        assert a["kind"] == b["kind"] and not set(a["pairs"]) & set(b["pairs"])


def test_reported_metrics(ref_run: dict) -> None:
    """``ray.train.report`` every log_every=4 steps from both ranks: loss (the window mean of that
    rank's step losses), batch_kind, samples_per_s, lr (the warmup + linear-decay schedule)."""
    from hybrid_ray.train_loop import _lr_lambda

    cfg, reports = ref_run["cfg"], ref_run["reports"]
    lr_at = _lr_lambda(cfg.optim.warmup_steps, 24)
    assert [r["metrics"][0]["step"] for r in reports] == [4, 8, 12, 16, 20, 24]
    for report in reports:
        assert len(report["metrics"]) == 2  # one dict per rank
        step = report["metrics"][0]["step"]
        assert (report["checkpoint"] is not None) == (step % 8 == 0)
        for rank, m in enumerate(report["metrics"]):
            trace = ref_run["trace"][rank]
            window = [r["loss"] for r in trace if step - 4 < r["global_step"] <= step]
            assert m["step"] == step
            assert m["loss"] == pytest.approx(sum(window) / 4, rel=1e-6)
            assert m["batch_kind"] == trace[step - 1]["kind"]
            assert m["samples_per_s"] > 0
            assert m["lr"] == pytest.approx(cfg.optim.lr * lr_at(step), abs=1e-12)
    # The Result carries the last checkpointed report.
    final = ref_run["result"].metrics
    assert {"loss", "batch_kind", "samples_per_s", "lr", "step"} <= final.keys()
    assert final["step"] == 24 and final["batch_kind"] in ("mono", "cross")


def test_checkpoints_hold_sharded_state_sampler_and_encoder(ref_run: dict) -> None:
    reports = ref_run["reports"]
    ckpts = {r["metrics"][0]["step"]: Path(r["checkpoint"]) for r in reports if r["checkpoint"]}
    assert sorted(ckpts) == [8, 16, 24]
    assert Path(ref_run["result"].checkpoint.path) == ckpts[24]
    for step in (8, 24):
        _check_checkpoint(ckpts[step], stage=2, world=2, global_step=step, trace0=ref_run["trace"][0])


def test_resume_from_checkpoint_then_worker_kill_repeat_the_reference(
    ref_run: dict, data_path: Path, tmp_path: Path
) -> None:
    """``hybrid-ray train --resume-from <ref step-8 checkpoint>`` (a new run), checkpointing every 4
    steps; rank 1 is killed at step 14 and Ray restarts the group from the run's own step-12
    checkpoint (not the --resume-from one). Every step trained, before and after the kill, has the
    reference's batch and, on both ranks, the reference's loss: weights, AdamW moments and the LR
    schedule all came back from DeepSpeed's shards."""
    import yaml

    from hybrid_ray.config import load_config as reload
    from hybrid_ray.train import main

    ckpt8 = next(Path(r["checkpoint"]) for r in ref_run["reports"] if r["metrics"][0]["step"] == 8)
    overrides = _overrides(data_path, tmp_path, "resumed", "run.checkpoint_every=4", "run.max_failures=1")
    cfg = _cfg(data_path, tmp_path, "resumed")
    assert main(["--config", "tiny.yaml", *overrides, "--resume-from", str(ckpt8)],
                step_hooks=[_tracer(cfg), CrashOnce(at_step=14)]) == 0

    # The resolved config is recorded, reflects the CLI overrides and round-trips through load_config.
    recorded = tmp_path / "resumed" / "config.yaml"
    raw = yaml.safe_load(recorded.read_text())
    assert raw["run"]["resume_from"] == str(ckpt8)
    assert raw["run"]["checkpoint_every"] == 4 and raw["run"]["max_failures"] == 1
    assert raw["data"]["path"] == str(data_path) and raw["model"]["name_or_path"] == "tiny"
    assert raw["optim"]["max_steps"] == 24  # from tiny.yaml
    assert to_dict(reload(recorded)) == raw

    for rank in (0, 1):
        ref = {r["global_step"]: r for r in ref_run["trace"][rank]}
        got = _trace(cfg, rank)
        steps = [r["global_step"] for r in got]
        restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
        assert steps[:restart] == list(range(9, 15)), steps  # from the step-8 checkpoint to the kill
        assert steps[restart:] == list(range(13, 25)), steps  # from the run's own step-12 checkpoint
        for mine in got:
            r = ref[mine["global_step"]]
            assert (mine["kind"], mine["pairs"], mine["q_lang"], mine["p_lang"]) == (
                r["kind"], r["pairs"], r["q_lang"], r["p_lang"]), mine["global_step"]
            assert mine["loss"] == pytest.approx(r["loss"], **LOSS_TOL), (rank, mine["global_step"])
    # The LR schedule continued from the checkpoint too (reported at steps 12, 16, 20, 24).
    ref_lr = {r["metrics"][0]["step"]: r["metrics"][0]["lr"] for r in ref_run["reports"]}
    for report in _reports(cfg):
        m = report["metrics"][0]
        assert m["lr"] == pytest.approx(ref_lr.get(m["step"], m["lr"]), abs=1e-12)


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_zero_stage_trains_and_exports(stage: int, ref_run: dict, data_path: Path, tmp_path: Path) -> None:
    """A 4-step run per ZeRO stage (2 workers, ~25 s each): checkpoint with that stage's shards,
    exported encoder (ZeRO-3 gathers the partitioned weights) that loads and moved from the init.

    Every stage does the same math as the ZeRO-2 reference: the losses of steps 1-4 match it on
    both ranks. (With warmup 2 the first three updates use lr x 0.5, 1, 1 whatever the run's
    length, so the shorter run's schedule does not matter; only the reduction order differs,
    about 1e-6 measured, while the loss moves by 0.04-0.5 per step here.)"""
    from hybrid_ray.train import run_training

    cfg = _cfg(data_path, tmp_path, f"zero{stage}", f"deepspeed.zero_stage={stage}", "optim.max_steps=4",
               "run.checkpoint_every=0", "run.log_every=2")
    result, exported = run_training(cfg, step_hooks=[_tracer(cfg)])
    # ZeRO-0 on CPU ranks of one machine averages through shared memory; ZeRO-1+ in DeepSpeed's hooks.
    assert result.metrics["grad_allreduce"] == ("shm" if stage == 0 else "deepspeed")
    trace0 = _trace(cfg, 0)
    assert [r["global_step"] for r in trace0] == [1, 2, 3, 4]
    for rank in (0, 1):
        got = [r["loss"] for r in _trace(cfg, rank)]
        ref = [r["loss"] for r in ref_run["trace"][rank][:4]]
        assert got == pytest.approx(ref, abs=1e-4), (stage, rank)
    _check_checkpoint(Path(result.checkpoint.path), stage=stage, world=2, global_step=4, trace0=trace0)
    _check_exported_encoder(exported)


def test_prefetch_keeps_batches_and_losses(ref_run: dict, data_path: Path, tmp_path: Path) -> None:
    """The reference ran with ``data.prefetch`` unset (auto: inline for 2 CPU workers on 2 cores,
    prefetching where a core is free); the same run with the other setting (2 batches tokenised
    ahead on a thread, or inline) trains on the same batches with the same losses on both ranks,
    and the prefetching run's checkpoint holds the sampler position after the last batch trained
    on, not after the ones prefetched."""
    from hybrid_ray.train import run_training

    assert ref_run["cfg"].data.prefetch is None
    ref_depth = ref_run["result"].metrics["prefetch"]
    other = 0 if ref_depth else 2
    # The reference's 24 steps (the LR schedule depends on the run's length) and checkpoints.
    cfg = _cfg(data_path, tmp_path, "other-prefetch", f"data.prefetch={other}", "run.num_to_keep=3")
    result, _ = run_training(cfg, step_hooks=[_tracer(cfg)])
    assert result.metrics["prefetch"] == other
    for rank in (0, 1):
        got, ref = _trace(cfg, rank), ref_run["trace"][rank]
        assert [(r["kind"], r["pairs"], r["q_lang"], r["p_lang"]) for r in got] == [
            (r["kind"], r["pairs"], r["q_lang"], r["p_lang"]) for r in ref]
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], **LOSS_TOL)
        # Each trace line carries the step's phase timings (the benchmark's per-phase breakdown).
        assert {"batch", "forward", "backward", "step"} <= set(got[-1]["phases"])
        assert all(v >= 0 for v in got[-1]["phases"].values())
    # This run reports on the default schedule (run.report_every_s unset: >= 2.5 s between
    # metrics-only reports, decided on rank 0 and broadcast): every checkpoint report goes, the first
    # metrics report goes, and a metrics report 4 tiny steps after a checkpoint's does not (it would
    # block until Ray Train's controller polls, 2 s).
    steps = [r["metrics"][0]["step"] for r in _reports(cfg)]
    assert {4, 8, 16, 24} <= set(steps) <= {4, 8, 12, 16, 20, 24} and len(steps) < 6, steps
    assert all(len(r["metrics"]) == 2 for r in _reports(cfg))  # both ranks reported every time
    prefetching = _reports(cfg) if other else ref_run["reports"]
    ckpt8 = next(Path(r["checkpoint"]) for r in prefetching if r["checkpoint"] and r["metrics"][0]["step"] == 8)
    state = json.loads((ckpt8 / "trainer_state.json").read_text())["sampler"]
    assert (state["epoch"], state["step"]) == (ref_run["trace"][0][7]["epoch"], ref_run["trace"][0][7]["step"] + 1)
    assert {"phase_s/forward", "phase_s/backward", "phase_s/step"} <= set(result.metrics)


def test_shared_memory_allreduce_trains_exactly_like_gloo(data_path: Path, tmp_path: Path, ray_local) -> None:
    """ZeRO-0 on 2 CPU workers averages gradients through DeepSpeed's shared-memory all-reduce
    (``deepspeed.cpu_allreduce=auto``); forcing DeepSpeed's own gloo all-reduce gives the same
    losses on both ranks bit for bit (with 2 ranks both sum a + b, then scale by 1/2)."""
    from hybrid_ray.train import run_training

    losses, kinds = {}, {}
    for mode in ("auto", "gloo"):
        cfg = _cfg(data_path, tmp_path, f"allreduce-{mode}", "deepspeed.zero_stage=0",
                   f"deepspeed.cpu_allreduce={mode}", "optim.max_steps=4", "run.checkpoint_every=0",
                   "run.log_every=2")
        result, _ = run_training(cfg, step_hooks=[_tracer(cfg)])
        kinds[mode] = result.metrics["grad_allreduce"]
        losses[mode] = [[r["loss"] for r in _trace(cfg, rank)] for rank in (0, 1)]
    assert kinds == {"auto": "shm", "gloo": "deepspeed"}
    assert losses["auto"] == losses["gloo"]
    assert len(losses["auto"][0]) == 4 and losses["auto"][0][-1] != losses["auto"][0][0]


def test_one_worker_zero0_skips_the_allreduce_and_keeps_the_math(data_path: Path, tmp_path: Path, ray_local) -> None:
    """At world size 1 with ZeRO-0 the loop turns DeepSpeed's gradient all-reduce off (nothing to
    average; it only copies). The losses still match a 1-worker ZeRO-2 run step for step."""
    from hybrid_ray.train import run_training

    losses = {}
    for stage in (0, 2):
        cfg = _cfg(data_path, tmp_path, f"w1-zero{stage}", "scaling.num_workers=1", f"deepspeed.zero_stage={stage}",
                   "optim.max_steps=4", "run.checkpoint_every=0", "run.log_every=2")
        run_training(cfg, step_hooks=[_tracer(cfg)])
        losses[stage] = [r["loss"] for r in _trace(cfg, 0)]
    assert len(losses[0]) == 4
    assert losses[0] == pytest.approx(losses[2], abs=1e-4)
    assert losses[0][-1] != losses[0][0]  # it trained
