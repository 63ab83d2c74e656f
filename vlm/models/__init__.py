"""The models: ViT encoder, text decoder, captioners, their preprocessors, and a
keras-hub language model with gated cross attention (`VisionLanguageModel`)."""

from vlm.models.captioner import Captioner
from vlm.models.captioner import build_captioner
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.image_encoder import ImageEncoder
from vlm.models.multi_image_captioner import MultiImageCaptioner
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor
from vlm.models.text_decoder import TextDecoder
from vlm.models.vision_language_model import VisionLanguageModel

__all__ = ["Captioner", "CaptionerPreprocessor", "ImageEncoder", "MultiImageCaptioner",
           "MultiImagePreprocessor", "TextDecoder", "VisionLanguageModel", "build_captioner"]
