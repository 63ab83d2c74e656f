"""Exports a `Captioner` as a TF SavedModel: encoded image bytes in, captions out.

Everything runs inside the graph: image decoding (JPEG, PNG, BMP, GIF,
WebP; grayscale, RGBA and 16-bit PNG become RGB) and resizing by the
model's own `CaptionerPreprocessor`, the ViT, the cached decoding loop of
`Captioner.generate_step` (XLA-compiled, image keys and values computed
once) and detokenization. The graph uses core TensorFlow ops
only, so any TensorFlow runtime (TF Serving, `tf.saved_model.load` without
keras or vlm) can run it.

Signatures:
    serving_default(images: tf.string [batch]) -> captions, log_probs
    serve_pixels(images: tf.float32 [batch, H, W, 3] in [0, 255]) -> captions, log_probs

A `MultiImageCaptioner` (such as the change captioner) takes every image of an
example, `num_images` of them, in one row:

    serving_default(images: tf.string [batch, num_images]) -> captions, log_probs
    serve_pixels(images: tf.float32 [batch, num_images, H, W, 3]) -> captions, log_probs

A `VisionLanguageModel` answers a prompt per image, each decoded on its own
(its prompt read in one pass, then the cached loop):

    serving_default(images: tf.string [batch], prompts: tf.string [batch]) -> captions, log_probs
    serve_pixels(images: tf.float32 [batch, H, W, 3], prompts: tf.string [batch]) -> ...

A request with an empty, unknown, truncated or corrupt image fails with
`InvalidArgumentError` saying why; an image over `MAX_IMAGE_PIXELS` (50
megapixels) is refused from its header before decoding, and the message
gives its size.

Exporting needs the TensorFlow backend; `export` arranges a subprocess
when the current process runs another one (the `.keras` file is
backend-neutral).
"""

import os
import subprocess
import sys

import keras
import tensorflow as tf

from vlm import samplers

# Samplers a SavedModel serves: the deterministic ones (a sampling seed
# would be baked into the graph).
SERVING_SAMPLERS = (samplers.GreedySampler, samplers.BeamSampler)


def export(model_path, output_dir, sampler="greedy", max_length=None, xla=True):
    """Exports the `.keras` model at `model_path` to a SavedModel in `output_dir`.

    Runs in this process under the TensorFlow backend, else in a
    `KERAS_BACKEND=tensorflow` subprocess.

    Args:
        model_path: a `.keras` file from `train.py` (any backend trained it).
        output_dir: the SavedModel folder to write (for TF Serving, a
            version folder such as `models/shapes/1`).
        sampler: "greedy", "beam", or a `GreedySampler` / `BeamSampler`.
        max_length: new tokens at most (default: the model's longest; for a
            prompted model a third of its sequence, so that a prompt has the
            other two thirds).
        xla: compile the decoding loop with XLA (`jit_compile=True`); turn it
            off for a TensorFlow runtime built without XLA.
    """
    sampler = _serving_sampler(sampler)
    if keras.config.backend() != "tensorflow":
        command = [sys.executable, "-m", "vlm", "export", "--model", model_path,
                   "--output", output_dir, *_sampler_flags(sampler)]
        if max_length:
            command += ["--max-length", str(max_length)]
        if not xla:
            command += ["--no-xla"]
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        print(f"Exporting under the TensorFlow backend (this process runs "
              f"{keras.config.backend()}): {' '.join(command[1:])}", file=sys.stderr)
        subprocess.run(command, env=env, check=True)
        return output_dir
    from vlm import load_captioner

    return export_model(load_captioner(model_path), output_dir, sampler, max_length, xla)


def export_model(model, output_dir, sampler="greedy", max_length=None, xla=True):
    """Writes the serving SavedModel of an in-memory `Captioner` (TensorFlow backend)."""
    text = model.preprocessor.serving_text()  # refuses a tokenizer it cannot serve, first
    if keras.config.backend() != "tensorflow":
        raise RuntimeError("export_model needs KERAS_BACKEND=tensorflow; use `export`.")
    sampler = _serving_sampler(sampler)
    if max_length is None and model.prompted:
        # A prompt and its answer share the sequence: the longest answer would
        # leave no room for any prompt.
        max_length = max(1, model.sequence_length // 3)
    max_length = model.resolve_max_length(max_length)
    module = _ServingModule(model, text, sampler, max_length, xla)
    signatures = {
        "serving_default": module.serve_bytes.get_concrete_function(),
        "serve_pixels": module.serve_pixels.get_concrete_function(),
    }
    tf.saved_model.save(module, output_dir, signatures=signatures)
    return output_dir


class _ServingModule(tf.Module):
    def __init__(self, model, text, sampler, max_length, xla):
        super().__init__(name="captioner_serving")
        # The Keras model stays out of tf.Module tracking; its tf.Variables
        # are tracked here so that the SavedModel stores them.
        self._variables = [v.value for v in model.variables]
        size = model.image_size
        preprocessor = model.preprocessor  # a local: kept out of tf.Module tracking
        self._text = text  # the preprocessor's word lookup and detokenizer
        noise = tf.constant(sampler.noise(max_length, 1, 1))
        # Images per example: a row of several for a `MultiImageCaptioner`.
        per_example = [] if model.images_per_example is None else [model.images_per_example]
        prefix = tf.constant([preprocessor.prefix_ids], tf.int32)

        def decode(images):
            prompt = None
            if preprocessor.prefix_ids:  # every example has all its images: one marker each
                prompt = tf.tile(prefix, [tf.shape(images)[0], 1])
            return model.generate_step(images, noise, sampler, max_length, prompt)

        self._decode = tf.function(decode, jit_compile=xla)

        def rows_of(pixels, images):
            """`(batch, *per_example, S, S, 3)` from one image per entry of `images`."""
            return tf.reshape(pixels, tf.concat([tf.shape(images)[:1 + len(per_example)],
                                                 [size, size, 3]], 0))

        @tf.function(input_signature=[
            tf.TensorSpec([None] + per_example, tf.string, name="images")])
        def serve_bytes(images):
            pixels = tf.map_fn(lambda contents: decode_one(preprocessor, contents),
                               tf.reshape(images, [-1]),
                               fn_output_signature=tf.TensorSpec([size, size, 3],
                                                                 tf.float32))
            return self._caption(rows_of(pixels, images))

        @tf.function(input_signature=[
            tf.TensorSpec([None] + per_example + [None, None, 3], tf.float32, name="images")])
        def serve_pixels(images):
            flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[-3:]], 0))
            return self._caption(rows_of(preprocessor.resize(flat), images))

        self.serve_bytes = serve_bytes
        self.serve_pixels = serve_pixels
        if model.prompted:  # a prompt per image (a VisionLanguageModel)
            self._prompted(model, preprocessor, noise, sampler, max_length, xla)

    def _prompted(self, model, preprocessor, noise, sampler, max_length, xla):
        """`serving_default(images, prompts)` and `serve_pixels(images, prompts)`."""
        size = model.image_size
        longest = model.sequence_length - 1 - max_length
        self._decode_prompted = tf.function(
            lambda images, prompt: model.generate_step(images, noise, sampler, max_length,
                                                       prompt), jit_compile=xla)

        def answer(pixels, prompts):
            def one(args):
                image, prompt = args
                ids = self._text.prompt_ids(prompt)[None]
                check = tf.debugging.assert_less_equal(
                    tf.size(ids), longest, message=f"A prompt is longer than the {longest} "
                    f"tokens this SavedModel takes (sequence_length {model.sequence_length} "
                    f"- 1 - max_length {max_length})")
                with tf.control_dependencies([check]):
                    out, log_prob = tf.cond(
                        tf.size(ids) > 0,
                        lambda: self._decode_prompted(image[None], ids),
                        lambda: self._decode(image[None]))
                return out[0], log_prob[0]

            ids, log_probs = tf.map_fn(one, (pixels, prompts), fn_output_signature=(
                tf.TensorSpec([max_length], tf.int32), tf.TensorSpec([], tf.float32)))
            return {"captions": self._text.detokenize(ids), "log_probs": log_probs}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images"),
                                      tf.TensorSpec([None], tf.string, name="prompts")])
        def serve_bytes(images, prompts):
            pixels = tf.map_fn(lambda contents: decode_one(preprocessor, contents), images,
                               fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return answer(pixels, prompts)

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
            tf.TensorSpec([None], tf.string, name="prompts")])
        def serve_pixels(images, prompts):
            return answer(preprocessor.resize(images), prompts)

        self.serve_bytes = serve_bytes
        self.serve_pixels = serve_pixels

    def _caption(self, pixels):
        def run():
            ids, log_probs = self._decode(pixels)
            return self._text.detokenize(ids), log_probs

        def empty():
            return tf.zeros([0], tf.string), tf.zeros([0], tf.float32)

        captions, log_probs = tf.cond(tf.shape(pixels)[0] > 0, run, empty)
        return {"captions": captions, "log_probs": log_probs}


def decode_one(preprocessor, contents):
    """One encoded image to model-ready pixels, with the model's preprocessor.

    The header is checked first (empty, unknown format, over
    MAX_IMAGE_PIXELS): a decompression bomb is refused undecoded.
    """
    return preprocessor.resize(preprocessor.decode_image(contents))


def _serving_sampler(sampler):
    sampler = samplers.get(sampler)
    if type(sampler) not in SERVING_SAMPLERS:
        raise ValueError(
            f"A SavedModel serves a greedy or beam sampler (deterministic). "
            f"Received: sampler={sampler!r}")
    return sampler


def _sampler_flags(sampler):
    """The `python -m vlm export` flags that name `sampler`."""
    if isinstance(sampler, samplers.BeamSampler):
        return ["--sampler", "beam", "--beams", str(sampler.num_beams)]
    return ["--sampler", "greedy"]
