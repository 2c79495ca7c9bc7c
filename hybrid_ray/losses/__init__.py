"""Contrastive losses, selected by ``loss.name`` (see :mod:`hybrid_ray.losses.registry`).

Importing the package registers the built-in losses.
"""

from hybrid_ray.losses import cached_infonce as _cached_infonce  # noqa: F401  (registers "cached_infonce")
from hybrid_ray.losses import infonce as _infonce  # noqa: F401  (registers "infonce")
from hybrid_ray.losses.cached_infonce import CachedInfoNCE
from hybrid_ray.losses.infonce import DistributedInfoNCE
from hybrid_ray.losses.registry import LOSSES, Loss, build_loss, get_loss, needs_encoder, register_loss

__all__ = ["LOSSES", "CachedInfoNCE", "DistributedInfoNCE", "Loss", "build_loss", "get_loss", "needs_encoder",
           "register_loss"]
