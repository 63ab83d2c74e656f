"""The captioning model: ViT encoder, text decoder, captioner and its preprocessor."""

from vlm.models.captioner import Captioner
from vlm.models.captioner import build_captioner
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.image_encoder import ImageEncoder
from vlm.models.multi_image_captioner import MultiImageCaptioner
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor
from vlm.models.text_decoder import TextDecoder

__all__ = ["Captioner", "CaptionerPreprocessor", "ImageEncoder", "MultiImageCaptioner",
           "MultiImagePreprocessor", "TextDecoder", "build_captioner"]
