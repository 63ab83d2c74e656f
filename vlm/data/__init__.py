"""Datasets, tokenizer and image preprocessing (TensorFlow and tf.data live here)."""
