"""Keras layers of `vlm`, one public layer per file."""

from vlm.layers.causal_self_attention import CausalSelfAttention
from vlm.layers.conv_stem import ConvStem
from vlm.layers.cross_attention import CrossAttention
from vlm.layers.decoder_block import DecoderBlock
from vlm.layers.focus_shift import FocusShift
from vlm.layers.gated_cross_attention_block import GatedCrossAttentionBlock
from vlm.layers.image_difference import ImageDifference
from vlm.layers.image_index_embedding import ImageIndexEmbedding
from vlm.layers.media_attention_mask import count_images
from vlm.layers.media_attention_mask import media_attention_mask
from vlm.layers.patch_position_embedding import PatchPositionEmbedding
from vlm.layers.relative_position_block import RelativePositionBlock
from vlm.layers.side_memory import SideMemory

__all__ = [
    "CausalSelfAttention",
    "ConvStem",
    "CrossAttention",
    "DecoderBlock",
    "FocusShift",
    "GatedCrossAttentionBlock",
    "ImageDifference",
    "ImageIndexEmbedding",
    "PatchPositionEmbedding",
    "RelativePositionBlock",
    "SideMemory",
    "count_images",
    "media_attention_mask",
]
