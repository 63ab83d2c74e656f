"""Measured, never asserted: speed and memory of `vlm` on this machine."""
