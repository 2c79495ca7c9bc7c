"""The dual encoder over any Hugging Face encoder."""

from hybrid_ray.modeling.encoder import DualEncoder, EncoderConfig

__all__ = ["DualEncoder", "EncoderConfig"]
