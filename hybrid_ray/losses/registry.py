"""The loss registry: ``loss.name`` in the training config picks a registered loss.

A loss is built as ``get_loss(name)(temperature=cfg.model.temperature, **cfg.loss.kwargs)`` and
called once per step as ``loss(q_emb, p_emb, logit_scale=scale) -> scalar tensor`` on the
embeddings of this rank's queries and passages (passages = b positives then b * n hard negatives);
it gathers whatever it needs across ranks itself.

A loss that needs the encoder (``cached_infonce``, GradCache: it encodes in chunks itself) sets
``needs_encoder = True`` and implements ``step(engine, q_inputs, p_inputs) -> (loss, logit_scale)``
(both detached): it runs its own forwards and calls ``engine.backward`` exactly once. The training
loop (``hybrid_ray.train_loop.train_loop``) then calls ``loss_fn.step(...)`` instead of encoding
both sides and calling ``loss_fn(...)``; :func:`needs_encoder` is the one check it makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from hybrid_ray.errors import ConfigError


class Loss(Protocol):
    """What the training loop calls every step (see the module docstring)."""

    needs_encoder: bool

    def __call__(
        self, q: torch.Tensor, p: torch.Tensor, logit_scale: torch.Tensor | float | None = None
    ) -> torch.Tensor: ...


LossFactory = Callable[..., Loss]

#: name -> factory(temperature=..., **kwargs) -> Loss, filled by :func:`register_loss`.
LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Class / function decorator: ``@register_loss("infonce")``."""

    def deco(factory: LossFactory) -> LossFactory:
        if name in LOSSES and LOSSES[name] is not factory:
            raise ConfigError(f"a loss named {name!r} is already registered", key="loss.name", value=name)
        LOSSES[name] = factory
        return factory

    return deco


def get_loss(name: str) -> LossFactory:
    """The factory registered as ``name``; ConfigError naming ``loss.name`` and the registered ones."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss (registered: {', '.join(sorted(LOSSES))})", key="loss.name", value=name)
    return LOSSES[name]


def build_loss(name: str, temperature: float, kwargs: dict[str, Any] | None = None) -> Loss:
    """``get_loss(name)(temperature=temperature, **kwargs)``, bad kwargs named as ``loss.kwargs``."""
    factory = get_loss(name)
    try:
        return factory(temperature=temperature, **(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"loss {name!r} does not take these arguments: {exc}", key="loss.kwargs",
                          value=dict(kwargs or {})) from exc


def needs_encoder(loss: Any) -> bool:
    """True when ``loss`` drives the encoder itself (``loss.step(engine, q_inputs, p_inputs)``)."""
    return bool(getattr(loss, "needs_encoder", False))
