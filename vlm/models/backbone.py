"""`Backbone`: what every vlm backbone says about itself."""

import keras


class Backbone(keras.Model):
    """A functional graph of an image `encoder` read by a text `decoder`: their sizes.

    Every vlm backbone sets `self.encoder` and `self.decoder` and has the
    decoding interface `encode(images)`, `cross_attention_mask(tokens,
    previous_images)` and the decoder's caches (`vlm.models.task.Task`).
    """

    @property
    def image_size(self):
        return self.encoder.image_size

    @property
    def sequence_length(self):
        return self.decoder.sequence_length

    @property
    def vocabulary_size(self):
        return self.decoder.vocabulary_size

    def encode(self, images):
        """The decoder's context for model-ready images (one encoder pass)."""
        return self.encoder(images, training=False)

    def cross_attention_mask(self, tokens, previous_images):
        """Every token sees the whole image: `(None, previous_images)`."""
        return None, previous_images
