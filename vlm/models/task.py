"""`Task`: what every vlm model kind shares around its backbone and preprocessor.

A task holds a backbone (the graph and its weights: `CaptionerBackbone`,
`MultiImageBackbone`, `VisionLanguageBackbone`) and a preprocessor, as a
keras-hub task does. It adds the caption loss and accuracy (`compile`), the
sampler (`compile(sampler=...)`) and compiled decoding (`generate_step`),
which reach the backbone only through the decoding interface every backbone
has: `encode(images)`, `cross_attention_mask(tokens, previous_images)` and
its decoder's `compute_context_caches`, `empty_caches` and
`call_with_cache`. The kinds' own `generate` (what images and prompts they
take) live in `Captioner`, `MultiImageCaptioner` and `VisionLanguageModel`.
"""

import keras
import numpy as np
from keras import ops

from vlm import samplers
from vlm.compilation import compiled_inference
from vlm.models.losses import CaptionLoss
from vlm.models.losses import MaskedTokenAccuracy


class Task(keras.Model):
    """A backbone's graph with its preprocessor, loss, sampler and compiled decoding.

    Calling the task calls the backbone: `{"images": ..., "tokens": (B, T)}`
    in, float32 next-token logits out.

    Args:
        backbone: a vlm backbone.
        preprocessor: optional preprocessor (saved with the model).
        **kwargs: base `keras.Model` arguments (`name`, ...).
    """

    # What the model reads, for callers (the CLI, evaluate.py, the export) to
    # ask instead of testing attributes: images per example (None: one image,
    # no per-example axis) and whether `generate` takes a prompt per image.
    images_per_example = None
    prompted = False

    def __init__(self, backbone, preprocessor=None, **kwargs):
        inputs = backbone.input
        super().__init__(inputs=inputs, outputs=backbone(inputs), **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        freeze_frozen_parts(self)

    @property
    def tokenizer(self):
        return None if self.preprocessor is None else self.preprocessor.tokenizer

    @property
    def image_size(self):
        return self.backbone.image_size

    @property
    def sequence_length(self):
        return self.backbone.sequence_length

    @property
    def prompt_length(self):
        """Tokens the default prompt takes before [START] (`<image>` markers)."""
        return 0 if self.preprocessor is None else len(self.preprocessor.prefix_ids)

    @property
    def sampler(self):
        """The decoding strategy `generate` uses by default, set by `compile(sampler=...)`."""
        return getattr(self, "_sampler", None) or samplers.get("greedy")

    def check_can_decode(self):
        if self.preprocessor is None:
            raise ValueError("This model has no preprocessor: it cannot turn ids into "
                             "captions.")

    def generate_prompted(self, pixels, prompts, sampler, max_length, return_details):
        """Decodes model-ready images after a prompt each (one string, or one per image).

        Each prompt is read in one pass before the loop; prompts of
        different token lengths are decoded in groups, each length compiled
        once. `max_length` defaults to what the longest prompt leaves.
        """
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
        return self.decoded(ids, log_probs, return_details, pixels)

    def decoded(self, ids, log_probs, return_details, pixels):
        """The captions of `ids`, or with `return_details` the `generate` dict."""
        captions = self.preprocessor.detokenize(ids) if len(ids) else []
        if return_details:
            return {"captions": captions, "token_ids": ids, "log_probs": log_probs,
                    "images": pixels}
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
            noise = sampler.noise(max_length, len(rows), self.backbone.vocabulary_size)
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

    def generate_step(self, images, noise, sampler, max_length, prompt=None):
        """Decodes a batch of model-ready images; traceable (`keras.ops` only).

        The images are encoded once and every decoder block's cross-attention
        keys and values computed once; then the sampler's loop runs on the
        decoder's key/value caches.

        Args:
            images: float32 model-ready images (the preprocessor's output).
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
        backbone = self.backbone
        decoder = backbone.decoder
        context_caches = decoder.compute_context_caches(backbone.encode(images))
        # With beams, rows i * beams ... read image i's keys and values, not
        # a copy per beam (`CrossAttention` shares a context between rows).
        rows = ops.shape(keras.tree.flatten(context_caches[0])[0])[0] * sampler.rows_per_input
        prompt_length = 0 if prompt is None else prompt.shape[1]
        if prompt_length is None:  # a TensorFlow graph for any prompt length (SavedModel)
            prompt_length = ops.shape(prompt)[1]
        caches = decoder.empty_caches(rows, prompt_length + max_length)
        seen = ops.zeros((rows,), "int32")  # images seen so far, per row
        if not isinstance(prompt_length, int) or prompt_length > 0:
            prompt = ops.repeat(ops.cast(prompt, "int32"), sampler.rows_per_input, axis=0)
            mask, seen = backbone.cross_attention_mask(prompt, seen)
            _, caches = decoder.call_with_cache(prompt, context_caches, caches, 0, mask)
        tokens = ops.concatenate(
            [ops.full((rows, 1), tokenizer.start_token_id, "int32"),
             ops.full((rows, max_length), tokenizer.pad_token_id, "int32")], axis=1)

        def next(tokens, state, index):
            caches, seen = state
            current = ops.take(tokens, ops.expand_dims(index, 0), axis=1)  # (rows, 1)
            mask, seen = backbone.cross_attention_mask(current, seen)
            logits, caches = decoder.call_with_cache(
                current, context_caches, caches, index + prompt_length, mask)
            return ops.log_softmax(ops.cast(logits[:, 0], "float32"), axis=-1), (caches, seen)

        return sampler(next, tokens, (caches, seen), noise, max_length, tokenizer.end_token_id,
                       tokenizer.pad_token_id)

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
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": (None if self.preprocessor is None
                             else keras.saving.serialize_keras_object(self.preprocessor)),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessor", "tokenizer"):  # "tokenizer": older files
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
