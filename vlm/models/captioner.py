"""`Captioner`: a `CaptionerBackbone` with its preprocessor, trained with `fit`."""

import keras
import numpy as np
from keras import ops

from vlm import samplers
from vlm.models.captioner_backbone import CaptionerBackbone
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.image_encoder import ImageEncoder
from vlm.models.task import Task
from vlm.models.text_decoder import TextDecoder


@keras.saving.register_keras_serializable(package="vlm")
class Captioner(Task):
    """An image captioner: ViT patches, read by a cross-attention decoder.

    Takes `{"images": (B, H, W, 3) floats in [0, 255], "tokens": (B, T)}` and
    returns next-token logits `(B, T, vocabulary_size)` (float32). The model
    holds its `CaptionerPreprocessor` (image rules and tokenizer), so a saved
    `.keras` file alone can caption images.

    Args:
        backbone: a `CaptionerBackbone` (the graph and its weights).
        preprocessor: optional `CaptionerPreprocessor` (saved with the model).
        tokenizer: optional tokenizer, instead of `preprocessor`: the model
            then makes its preprocessor from it and the backbone's sizes.
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Example:

    >>> model = Captioner(CaptionerBackbone(encoder, decoder), tokenizer=tokenizer)
    >>> model.compile(optimizer="adamw")   # masked loss and accuracy
    >>> model.fit(train_batches, epochs=1)
    >>> model.generate(images, sampler="beam")
    """

    def __init__(self, backbone, preprocessor=None, tokenizer=None, **kwargs):
        if preprocessor is not None and tokenizer is not None:
            raise ValueError("Pass `preprocessor` or `tokenizer`, not both: the "
                             "preprocessor holds the tokenizer.")
        if tokenizer is not None:
            preprocessor = CaptionerPreprocessor(
                tokenizer, backbone.image_size, backbone.sequence_length, name="preprocessor")
        super().__init__(backbone, preprocessor=preprocessor, **kwargs)

    def generate(self, images, sampler=None, max_length=None, return_details=False,
                 prompts=None):
        """Captions a batch of images, or continues a prompt for each.

        The images are encoded once and every decoder block's cross-attention
        keys and values computed once; the decoding loop runs compiled (XLA on
        TensorFlow and JAX; `torch.export` and Inductor on PyTorch), compiled
        once per batch size, sampler setting and `max_length` for the
        model's lifetime (`vlm.compilation.compiled_inference`).

        Args:
            images: a `(batch, H, W, C)` array or tensor, or a list of images
                of any sizes (see `CaptionerPreprocessor`).
            sampler: "greedy", "beam", "top_k", "top_p" (default settings) or
                a `vlm.samplers.Sampler`, such as `BeamSampler(num_beams=2)`;
                None uses the model's (`compile(sampler=...)`, else greedy).
            max_length: new tokens at most (default `sequence_length - 1`).
            return_details: also return the token ids and the sequences'
                log-probabilities.
            prompts: optional text before [START]: one string for every
                image or one per image (a question, for a model trained on
                `prompt [START] answer`). Each prompt is read in one pass
                before the loop; prompts of different token lengths are
                decoded in groups, each length compiled once. `max_length`
                then defaults to what the longest prompt leaves.

        Returns:
            A list of caption strings, or with `return_details` a dict with
            `captions`, `token_ids` (batch, max_length), `log_probs`
            (batch,) and `images`, the pixels as the model read them.
        """
        sampler = self.sampler if sampler is None else samplers.get(sampler)
        self.check_can_decode()
        if prompts is not None:
            if isinstance(images, (list, tuple)) and not len(images):
                raise ValueError("`images` is empty: give at least one image. "
                                 "Received: images=[]")
            return self.generate_prompted(self.preprocessor(images), prompts, sampler,
                                          max_length, return_details)
        max_length = self.resolve_max_length(max_length)
        pixels = self.preprocessor(images)
        batch = int(ops.shape(pixels)[0])
        if batch == 0:
            ids, log_probs = np.zeros((0, max_length), "int32"), np.zeros((0,), "float32")
        else:
            noise = sampler.noise(max_length, batch, self.backbone.vocabulary_size)
            ids, log_probs = self.make_generate_function(sampler, max_length)(pixels, noise)
            ids = ops.convert_to_numpy(ids).astype("int32")
            log_probs = ops.convert_to_numpy(log_probs).astype("float32")
        return self.decoded(ids, log_probs, return_details, pixels)


def build_captioner(model_config, vocabulary_size, tokenizer=None, dtype=None):
    """Builds a `Captioner` from a `configs` model section.

    Args:
        model_config: a `vlm.config.ModelConfig`.
        vocabulary_size: int, the tokenizer's vocabulary size.
        tokenizer: the tokenizer to ship inside the model.
        dtype: optional dtype policy name (for example "mixed_bfloat16").
    """
    encoder, decoder = build_encoder_decoder(model_config, vocabulary_size, dtype=dtype)
    return Captioner(CaptionerBackbone(encoder, decoder, name="backbone"), tokenizer=tokenizer,
                     name="captioner")


def build_encoder_decoder(model_config, vocabulary_size, dtype=None, sources=None):
    """The `ImageEncoder` and `TextDecoder` of a `configs` model section.

    Args:
        model_config: a `vlm.config.ModelConfig`.
        vocabulary_size: int, the tokenizer's vocabulary size.
        dtype: optional dtype policy name.
        sources: optional context names for the decoder (`TextDecoder`).
    """
    encoder = build_encoder(model_config, dtype=dtype)
    decoder = TextDecoder(
        vocabulary_size=vocabulary_size,
        sequence_length=model_config.sequence_length,
        hidden_dim=model_config.decoder_dim,
        num_layers=model_config.decoder_layers,
        num_heads=model_config.decoder_heads,
        mlp_dim=model_config.decoder_mlp_dim,
        num_key_value_heads=model_config.num_key_value_heads,
        dropout=model_config.dropout,
        tie_embeddings=model_config.tie_embeddings,
        gated_mlp=model_config.decoder_gated_mlp,
        grid_size=model_config.image_size // model_config.patch_size,
        focus_shift=model_config.decoder_focus_shift,
        position_readout=model_config.decoder_position_readout,
        sources=sources,
        dtype=dtype,
        name="decoder",
    )
    return encoder, decoder


def stem_filters(model_config):
    """Channels of the encoder's `ConvStem`: encoder_dim / 2**n, ..., encoder_dim / 2."""
    layers = model_config.encoder_stem_layers
    return tuple(model_config.encoder_dim // 2 ** (layers - i) for i in range(layers))


def build_encoder(model_config, dtype=None):
    """The `ImageEncoder` of a `configs` model section."""
    return ImageEncoder.from_sizes(
        image_size=model_config.image_size,
        patch_size=model_config.patch_size,
        num_layers=model_config.encoder_layers,
        num_heads=model_config.encoder_heads,
        hidden_dim=model_config.encoder_dim,
        mlp_dim=model_config.encoder_mlp_dim,
        dropout=model_config.dropout,
        preset=model_config.encoder_preset,
        stem_filters=stem_filters(model_config),
        stem_coordinates=model_config.encoder_coordinates,
        stem_positions=model_config.encoder_stem_positions,
        relative_layers=model_config.encoder_relative_layers,
        relative_init=model_config.encoder_relative_init,
        side_memory=model_config.encoder_side_memory,
        add_2d_positions=model_config.add_2d_positions,
        dtype=dtype,
        name="encoder",
    )
