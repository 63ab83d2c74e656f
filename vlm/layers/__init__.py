"""Keras layers of `vlm`, one public layer per file."""

from vlm.layers.cross_attention import CrossAttention

__all__ = ["CrossAttention"]
