"""Serving artifacts: a TF SavedModel from image bytes to captions."""
