"""The models, per kind a backbone (the graph), a task and a preprocessor: the captioner,
the several-image captioner and a keras-hub language model with gated cross attention."""

from vlm.models.backbone import Backbone
from vlm.models.captioner import Captioner
from vlm.models.captioner import build_captioner
from vlm.models.captioner_backbone import CaptionerBackbone
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.image_encoder import ImageEncoder
from vlm.models.multi_image_backbone import MultiImageBackbone
from vlm.models.multi_image_captioner import MultiImageCaptioner
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor
from vlm.models.task import Task
from vlm.models.text_decoder import TextDecoder
from vlm.models.vision_language_backbone import VisionLanguageBackbone
from vlm.models.vision_language_model import VisionLanguageModel

__all__ = ["Backbone", "Captioner", "CaptionerBackbone", "CaptionerPreprocessor", "ImageEncoder",
           "MultiImageBackbone", "MultiImageCaptioner", "MultiImagePreprocessor", "Task",
           "TextDecoder", "VisionLanguageBackbone", "VisionLanguageModel", "build_captioner"]
