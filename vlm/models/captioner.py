"""`Captioner`: the image encoder and text decoder, trained with `fit`."""

import keras
import numpy as np
from keras import ops

from vlm import samplers
from vlm.backend import replica_sum
from vlm.compilation import compiled_inference
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.image_encoder import ImageEncoder
from vlm.models.text_decoder import TextDecoder

PAD_ID = 0  # the tokenizer reserves id 0 for padding


@keras.saving.register_keras_serializable(package="vlm")
class CaptionLoss(keras.losses.Loss):
    """Token cross-entropy from logits, the mean over the non-padding labels.

    Args:
        pad_token_id: label id that contributes nothing.
    """

    def __init__(self, pad_token_id=PAD_ID, name="caption_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = pad_token_id

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        mask = ops.cast(ops.not_equal(y_true, self.pad_token_id), "float32")
        per_token = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        # The mean over the batch's real tokens (a scalar, so Keras' own
        # reduction leaves it as is). Under tf.distribute each replica divides
        # its sum by the global count; Keras sums the replicas' gradients (and
        # reports the mean of the replicas' losses times their number), so both
        # are those of the global batch's token mean.
        total = ops.stop_gradient(replica_sum(ops.sum(mask)))
        return ops.sum(per_token * mask) / ops.maximum(total, 1.0)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        return config


@keras.saving.register_keras_serializable(package="vlm")
class MaskedTokenAccuracy(keras.metrics.Metric):
    """Fraction of non-padding next tokens predicted exactly (argmax).

    Args:
        pad_token_id: label id that is not counted.
    """

    def __init__(self, pad_token_id=PAD_ID, name="token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = pad_token_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        mask = ops.not_equal(y_true, self.pad_token_id)
        hits = ops.logical_and(
            ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), mask
        )
        self.correct.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(mask, "float32")))

    def result(self):
        return ops.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        return config


@keras.saving.register_keras_serializable(package="vlm")
class Captioner(keras.Model):
    """An image captioner: ViT patches, read by a cross-attention decoder.

    Takes `{"images": (B, H, W, 3) floats in [0, 255], "tokens": (B, T)}` and
    returns next-token logits `(B, T, vocabulary_size)` (float32). The model
    holds its `CaptionerPreprocessor` (image rules and tokenizer), so a saved
    `.keras` file alone can caption images.

    Args:
        encoder: an `ImageEncoder`.
        decoder: a `TextDecoder`.
        preprocessor: optional `CaptionerPreprocessor` (saved with the model).
        tokenizer: optional tokenizer, instead of `preprocessor`: the model
            then makes its preprocessor from it and its own sizes.
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Example:

    >>> model = Captioner(encoder, decoder, tokenizer=tokenizer)
    >>> model.compile(optimizer="adamw")   # masked loss and accuracy
    >>> model.fit(train_batches, epochs=1)
    >>> model.generate(images, sampler="beam")
    """

    # What the model reads, for callers (the CLI, evaluate.py, the export) to
    # ask instead of testing attributes: images per example (None: one image,
    # no per-example axis), the `<image>` marker put before the text (None:
    # none) and whether `generate` takes a prompt per image (questions).
    images_per_example = None
    image_token_id = None
    prompted = False

    def __init__(self, encoder, decoder, preprocessor=None, tokenizer=None, **kwargs):
        if preprocessor is not None and tokenizer is not None:
            raise ValueError("Pass `preprocessor` or `tokenizer`, not both: the "
                             "preprocessor holds the tokenizer.")
        images = keras.Input(
            (encoder.image_size, encoder.image_size, 3), name="images"
        )
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        logits = decoder(tokens, encoder(images))
        super().__init__(
            inputs={"images": images, "tokens": tokens}, outputs=logits, **kwargs
        )
        self.encoder = encoder
        self.decoder = decoder
        if tokenizer is not None:
            preprocessor = CaptionerPreprocessor(
                tokenizer, encoder.image_size, decoder.sequence_length, name="preprocessor")
        self.preprocessor = preprocessor
        freeze_frozen_parts(self)

    @property
    def tokenizer(self):
        return None if self.preprocessor is None else self.preprocessor.tokenizer

    @property
    def sampler(self):
        """The decoding strategy `generate` uses by default, set by `compile(sampler=...)`."""
        return getattr(self, "_sampler", None) or samplers.get("greedy")

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
            `captions`, `token_ids` (batch, max_length) and `log_probs`
            (batch,).
        """
        sampler = self.sampler if sampler is None else samplers.get(sampler)
        if self.preprocessor is None:
            raise ValueError("This model has no preprocessor: it cannot turn ids into "
                             "captions.")
        if prompts is not None:
            return self._generate_prompted(images, prompts, sampler, max_length, return_details)
        max_length = self.resolve_max_length(max_length)
        pixels = self.preprocessor(images)
        batch = int(ops.shape(pixels)[0])
        if batch == 0:
            ids, log_probs = np.zeros((0, max_length), "int32"), np.zeros((0,), "float32")
        else:
            noise = sampler.noise(max_length, batch, self.decoder.vocabulary_size)
            ids, log_probs = self.make_generate_function(sampler, max_length)(pixels, noise)
            ids = ops.convert_to_numpy(ids).astype("int32")
            log_probs = ops.convert_to_numpy(log_probs).astype("float32")
        captions = self.preprocessor.detokenize(ids) if batch else []
        if return_details:
            return {"captions": captions, "token_ids": ids, "log_probs": log_probs}
        return captions

    def _generate_prompted(self, images, prompts, sampler, max_length, return_details):
        """`generate` with `prompts`: checked, tokenized, decoded by prompt length."""
        if isinstance(images, (list, tuple)) and not len(images):
            raise ValueError("`images` is empty: give at least one image. Received: images=[]")
        pixels = self.preprocessor(images)
        batch = int(pixels.shape[0])
        if batch == 0:
            raise ValueError(f"`images` holds no image. Received: shape={tuple(pixels.shape)}")
        if isinstance(prompts, str):
            prompts = [prompts] * batch
        if len(prompts) != batch:
            raise ValueError(f"Got {len(prompts)} prompts for {batch} images: give one per "
                             "image, or one string for all.")
        rows = self.preprocessor.prompt_ids(prompts)
        longest = self.sequence_length - 2  # room for [START] and one new token
        for i, row in enumerate(rows):
            if len(row) > longest:
                raise ValueError(
                    f"Prompt {i} is {len(row)} tokens; this model's sequence_length "
                    f"{self.sequence_length} allows at most {longest}. Received: {prompts[i]!r}")
        if max_length is None:
            max_length = self.sequence_length - 1 - max(len(r) for r in rows)
        max_length = self.resolve_max_length(max_length)
        ids, log_probs = self.generate_groups(pixels, rows, sampler, max_length)
        captions = self.preprocessor.detokenize(ids)
        if return_details:
            return {"captions": captions, "token_ids": ids, "log_probs": log_probs}
        return captions

    def generate_groups(self, pixels, prompt_rows, sampler, max_length):
        """Decodes examples grouped by prompt length, each length compiled once.

        Args:
            pixels: model-ready images, one (or one group of) per example.
            prompt_rows: one int array of prompt ids (before [START]) per
                example.
            sampler: a `vlm.samplers.Sampler`.
            max_length: new tokens at most.

        Returns:
            `(ids, log_probs)`: NumPy int32 `(batch, max_length)`, float32
            `(batch,)`, in the examples' order.
        """
        batch = len(prompt_rows)
        ids = np.zeros((batch, max_length), "int32")
        log_probs = np.zeros((batch,), "float32")
        pixels = ops.convert_to_numpy(pixels)
        for length in sorted({len(p) for p in prompt_rows}):
            rows = np.asarray([i for i, p in enumerate(prompt_rows) if len(p) == length])
            if length + max_length > self.sequence_length - 1:
                raise ValueError(
                    f"A prompt of {length} tokens leaves no room for max_length={max_length} "
                    f"new tokens in the model's {self.sequence_length} positions (example "
                    f"{int(rows[0])}).")
            noise = sampler.noise(max_length, len(rows), self.decoder.vocabulary_size)
            prompt = np.stack([prompt_rows[i] for i in rows]).reshape(len(rows), length)
            generate = self.make_generate_function(sampler, max_length, length)
            prompt = (ops.convert_to_tensor(prompt.astype("int32")),) if length else ()
            group_ids, group_log_probs = generate(ops.convert_to_tensor(pixels[rows]), noise,
                                                  *prompt)
            ids[rows] = ops.convert_to_numpy(group_ids)
            log_probs[rows] = ops.convert_to_numpy(group_log_probs)
        return ids, log_probs

    def make_generate_function(self, sampler, max_length, prompt_length=0):
        """`generate_step` compiled for this setting (`vlm.compilation.compiled_inference`).

        Made once per `(sampler.trace_key(), max_length, prompt_length)` and
        kept: later calls, other seeds and weight updates reuse it. The
        function takes `(images, noise)`, and `prompt` when `prompt_length`.
        """
        if getattr(self, "_generate_functions", None) is None:
            self._generate_functions = {}
        key = (sampler.trace_key(), max_length, prompt_length)
        if key not in self._generate_functions:
            self._generate_functions[key] = compiled_inference(
                lambda images, noise, prompt=None: self.generate_step(
                    images, noise, sampler, max_length, prompt),
                self.variables)
        return self._generate_functions[key]

    def encode_images(self, images):
        """The decoder's context for model-ready images (one encoder pass)."""
        return self.encoder(images, training=False)

    def cross_attention_mask(self, tokens, previous_images):
        """Rows of the cross-attention mask for `tokens`, and the images seen after them.

        A captioner of one image lets every token see all of it: `(None,
        previous_images)`. Models that interleave images with text
        (`MultiImageCaptioner`) extend their mask here, one row per token.
        """
        return None, previous_images

    def generate_step(self, images, noise, sampler, max_length, prompt=None):
        """Decodes a batch of model-ready images; traceable (`keras.ops` only).

        Args:
            images: float32 model-ready images, `(batch, S, S, 3)` in [0,
                255] (the preprocessor's output).
            noise: the sampler's `noise(max_length, batch, vocabulary_size)`.
            sampler: a `vlm.samplers.Sampler`.
            max_length: int, new tokens at most.
            prompt: optional int32 `(batch, prompt_length)` tokens before
                [START] (for example `<image>` markers or a question), read
                in one pass before the loop (a traced length: at least one token).

        Returns:
            `(ids, log_probs)`: int32 `(batch, max_length)` and float32
            `(batch,)`.
        """
        tokenizer = self.tokenizer
        context_caches = self.decoder.compute_context_caches(
            self.encode_images(images))  # once per image
        # With beams, rows i * beams ... read image i's keys and values, not
        # a copy per beam (`CrossAttention` shares a context between rows).
        rows = ops.shape(keras.tree.flatten(context_caches[0])[0])[0] * sampler.rows_per_input
        prompt_length = 0 if prompt is None else prompt.shape[1]
        if prompt_length is None:  # a TensorFlow graph for any prompt length (SavedModel)
            prompt_length = ops.shape(prompt)[1]
        caches = self.decoder.empty_caches(rows, prompt_length + max_length)
        seen = ops.zeros((rows,), "int32")  # images seen so far, per row
        if not isinstance(prompt_length, int) or prompt_length > 0:
            prompt = ops.repeat(ops.cast(prompt, "int32"), sampler.rows_per_input, axis=0)
            mask, seen = self.cross_attention_mask(prompt, seen)
            _, caches = self.decoder.call_with_cache(prompt, context_caches, caches, 0, mask)
        tokens = ops.concatenate(
            [ops.full((rows, 1), tokenizer.start_token_id, "int32"),
             ops.full((rows, max_length), tokenizer.pad_token_id, "int32")], axis=1)

        def next(tokens, state, index):
            caches, seen = state
            current = ops.take(tokens, ops.expand_dims(index, 0), axis=1)  # (rows, 1)
            mask, seen = self.cross_attention_mask(current, seen)
            logits, caches = self.decoder.call_with_cache(
                current, context_caches, caches, index + prompt_length, mask)
            return ops.log_softmax(ops.cast(logits[:, 0], "float32"), axis=-1), (caches, seen)

        return sampler(next, tokens, (caches, seen), noise, max_length, tokenizer.end_token_id,
                       tokenizer.pad_token_id)

    # Positions the default prompt takes before [START] (`<image>` markers).
    prompt_length = 0

    def resolve_max_length(self, max_length):
        """`max_length`, or the longest the model allows when None; checked."""
        longest = self.sequence_length - 1 - self.prompt_length
        max_length = longest if max_length is None else max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not (
                1 <= max_length <= longest):
            markers = f" - {self.prompt_length} markers" if self.prompt_length else ""
            raise ValueError(
                f"`max_length` must be an int in [1, {longest}] (the model's "
                f"sequence_length - 1{markers}). Received: max_length={max_length!r}")
        return max_length

    @property
    def image_size(self):
        return self.encoder.image_size

    @property
    def sequence_length(self):
        return self.decoder.sequence_length

    def compile(self, optimizer="adamw", loss=None, metrics=None, *, sampler="greedy",
                **kwargs):
        """`keras.Model.compile` with the masked caption loss and accuracy as defaults.

        `sampler` is the decoding strategy of `generate` from now on (a
        name or a `vlm.samplers.Sampler`), as keras-hub's
        `CausalLM.compile(sampler=...)`; a loaded model decodes greedily
        until compiled with another.
        """
        self._sampler = samplers.get(sampler)
        super().compile(
            optimizer=optimizer,
            loss=CaptionLoss() if loss is None else loss,
            metrics=[MaskedTokenAccuracy()] if metrics is None else metrics,
            **kwargs,
        )

    def compile_from_config(self, config):
        """Restores the compile settings saved in a `.keras` file."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "preprocessor": (
                None
                if self.preprocessor is None
                else keras.saving.serialize_keras_object(self.preprocessor)
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "preprocessor", "tokenizer"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def freeze_frozen_parts(model):
    """Freezes every sublayer and weight of the parts of `model` marked untrainable.

    A part saved frozen (`trainable=False` in its config) gets the flag
    before it makes its sublayers, which then start trainable: freezing them
    too makes a loaded model train (and count) what the saved one did.
    """
    for layer in model._flatten_layers(include_self=False):
        if not layer.trainable:
            layer.trainable = False
            for variable in layer.weights:
                variable.trainable = False


def build_captioner(model_config, vocabulary_size, tokenizer=None, dtype=None):
    """Builds a `Captioner` from a `configs` model section.

    Args:
        model_config: a `vlm.config.ModelConfig`.
        vocabulary_size: int, the tokenizer's vocabulary size.
        tokenizer: the tokenizer to ship inside the model.
        dtype: optional dtype policy name (for example "mixed_bfloat16").
    """
    encoder, decoder = build_encoder_decoder(model_config, vocabulary_size, dtype=dtype)
    return Captioner(encoder, decoder, tokenizer=tokenizer, name="captioner")


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
        add_2d_positions=model_config.add_2d_positions,
        dtype=dtype,
        name="encoder",
    )
