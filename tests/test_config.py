"""The typed training config: load_config / apply_overrides return a validated TrainConfig instance,
one place per check, the loss and model-builder registries, YAML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hybrid_ray.config import ModelConfig, TrainConfig, apply_overrides, config_from_dict, load_config, to_dict, to_yaml
from hybrid_ray.errors import ConfigError
from hybrid_ray.modeling.encoder_config import EncoderConfig


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.parquet"
    path.touch()  # the config only checks that the path exists
    return path


def test_load_config_returns_the_dataclass(data: Path) -> None:
    cfg = load_config("tiny.yaml", [f"data.path={data}", "sampler.alpha=0.25"])
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.model, ModelConfig)
    assert isinstance(cfg.model, EncoderConfig)  # one model config: the encoder's fields, inherited
    assert cfg.sampler.alpha == 0.25 and cfg.model.name_or_path == "tiny" and cfg.model.max_length == 32
    assert cfg.loss.name == "infonce" and cfg.loss.kwargs == {}
    assert cfg.model.encoder_config() == EncoderConfig(max_length=32, temperature=0.05)


def test_apply_overrides_revalidates_and_leaves_the_input(data: Path) -> None:
    cfg = load_config("tiny.yaml", [f"data.path={data}"])
    new = apply_overrides(cfg, {"sampler.alpha": 1.0, "run.name": "t1", "run.export_dir": None})
    assert (new.sampler.alpha, new.run.name) == (1.0, "t1")
    assert cfg.sampler.alpha == 0.5 and cfg.run.name == "tiny"
    assert apply_overrides(cfg, ["optim.lr=0.01"]).optim.lr == 0.01
    with pytest.raises(ConfigError, match=r"sampler\.alpha.*\[0, 1\]"):
        apply_overrides(cfg, {"sampler.alpha": 1.5})
    with pytest.raises(ConfigError, match=r"model\.pooling"):  # checked once, in EncoderConfig
        apply_overrides(cfg, ["model.pooling=max"])
    with pytest.raises(ConfigError, match=r"optim\.bogus"):
        apply_overrides(cfg, ["optim.bogus=1"])
    with pytest.raises(ConfigError, match=r"optim\.global_batch_size"):
        apply_overrides(cfg, {"scaling.num_workers": 3})


def test_loss_name_selects_a_registered_loss(data: Path) -> None:
    from hybrid_ray.losses import LOSSES, DistributedInfoNCE, build_loss

    assert LOSSES["infonce"] is DistributedInfoNCE
    with pytest.raises(ConfigError, match=r"loss\.name.*registered: .*infonce"):
        load_config("tiny.yaml", [f"data.path={data}", "loss.name=nope"])
    with pytest.raises(ConfigError, match=r"loss\.kwargs"):
        build_loss("infonce", 0.05, {"bogus": 1})
    assert isinstance(build_loss("infonce", 0.1), DistributedInfoNCE)


def test_yaml_and_dict_round_trip(data: Path) -> None:
    cfg = load_config("tiny.yaml", [f"data.path={data}", "eval.langs=[en,de]"])
    path = data.parent / "cfg.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(to_dict(cfg)) == cfg
    assert dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="x")).run.name == "x"


def test_tiny_is_a_registered_builder_not_a_path(data: Path) -> None:
    from hybrid_ray.modeling.builders import get_model_builder, is_registered

    assert is_registered("tiny") and not is_registered("intfloat/multilingual-e5-small")
    assert get_model_builder("tiny") is not None and get_model_builder("/some/dir") is None
    with pytest.raises(ConfigError, match=r"model\.name_or_path"):
        load_config("tiny.yaml", [f"data.path={data}", "model.name_or_path=./no-such-model"])


def test_lora_and_train_top_layers_do_not_combine(tmp_path) -> None:
    from hybrid_ray.config import load_config
    from hybrid_ray.errors import ConfigError

    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    with pytest.raises(ConfigError, match="do not combine") as e:
        load_config("tiny.yaml", [f"data.path={data}", "model.train_top_layers=1", "model.lora.r=4"])
    assert "model.train_top_layers" in str(e.value)
