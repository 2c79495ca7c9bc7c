"""Named model builders: ``model.name_or_path`` values that build an encoder instead of loading one.

Why a registry: the tiny random BERT that tests, CI and ``configs/tiny.yaml`` train lives in
``hybrid_ray.testing``; production code must not import test code, yet a Ray Train worker has to
build it from nothing but the config. ``hybrid_ray.testing`` registers ``"tiny"`` with
:func:`register_model_builder`. A worker process starts without that registration, so the
registry also keeps, per builder name, the module that registers it (``BUILDER_MODULES``); that
module is imported on the first lookup of its name only, never on the path of a real model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybrid_ray.modeling.encoder import DualEncoder, EncoderConfig

ModelBuilder = Callable[["EncoderConfig"], "DualEncoder"]

#: name -> builder(encoder_config) -> DualEncoder, filled by :func:`register_model_builder`.
MODEL_BUILDERS: dict[str, ModelBuilder] = {}
#: name -> the module whose import registers it (looked up lazily, see the module docstring).
BUILDER_MODULES: dict[str, str] = {"tiny": "hybrid_ray.testing"}


def register_model_builder(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: ``@register_model_builder("tiny")`` on ``fn(encoder_config) -> DualEncoder``."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODEL_BUILDERS[name] = fn
        return fn

    return deco


def is_registered(name: str) -> bool:
    """True when ``name`` is a builder name (registered, or known by its registering module)."""
    return name in MODEL_BUILDERS or name in BUILDER_MODULES


def get_model_builder(name: str) -> ModelBuilder | None:
    """The builder called ``name``, or None when ``name`` is a model path / hub name."""
    if name not in MODEL_BUILDERS and name in BUILDER_MODULES:
        importlib.import_module(BUILDER_MODULES[name])
    return MODEL_BUILDERS.get(name)
