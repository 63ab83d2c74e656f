"""`vlm`: a Keras 3 vision-language model (ViT encoder, cross-attention decoder)."""

__version__ = "0.1.0"
