"""Serving artifacts: a TF SavedModel from image bytes to captions."""

from vlm.export.saved_model import export
from vlm.export.saved_model import export_model

__all__ = ["export", "export_model"]
