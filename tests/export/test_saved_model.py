"""The serving SavedModel: image bytes in, the same captions as `generate` out."""

import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from tests.data.image_files import odd_images
from tests.data.image_files import png_bomb
from tests.generation.test_generator import MODEL
from tests.generation.test_generator import golden_images
from vlm import load_captioner
from vlm.data.images import decode_image
from vlm.export.saved_model import export
from vlm.samplers import BeamSampler

SERVE_SCRIPT = """
import json, sys
import tensorflow as tf
serving = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
blobs = [open(path, "rb").read() for path in sys.argv[2:]]
out = serving(images=tf.constant(blobs))
print(json.dumps({"captions": [c.decode() for c in out["captions"].numpy()],
                  "log_probs": out["log_probs"].numpy().tolist(),
                  "modules": [m for m in ("vlm",) if m in sys.modules]}))
"""


def encode(image, fmt):
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def serve_in_fresh_process(export_dir, files):
    """Runs the export in a new Python that imports only tensorflow."""
    result = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, export_dir, *files],
                            capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model exported (in a TF subprocess on the JAX/torch runs)."""
    folder = str(tmp_path_factory.mktemp("export") / "shapes_serving")
    export(MODEL, folder)
    return folder


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("requests")
    paths = []
    for i, image in enumerate(golden_images(4)):
        fmt = ("PNG", "JPEG", "BMP", "GIF")[i]
        path = folder / f"image{i}.{fmt.lower()}"
        path.write_bytes(encode(image, fmt))
        paths.append(str(path))
    big = np.kron(golden_images(1)[0], np.ones((3, 2, 1), "uint8"))  # 192x128: other size
    path = folder / "big.png"
    path.write_bytes(encode(big, "PNG"))
    paths.append(str(path))
    # Grayscale, RGBA, 16-bit PNG and RGBA WebP become RGB in the graph.
    odd = odd_images(golden_images(2)[1])
    for name in ("gray.png", "rgba.png", "deep.png"):
        (folder / name).write_bytes(odd[name])
        paths.append(str(folder / name))
    alpha = np.dstack([golden_images(1)[0], np.full((64, 64), 9, "uint8")])
    PIL.Image.fromarray(alpha).save(folder / "alpha.webp", lossless=True)
    return paths + [str(folder / "alpha.webp")]


def decoded(paths):
    """What the graph decodes: TF's decoders, to compare like with like."""
    return [decode_image(open(p, "rb").read()).numpy() for p in paths]


@pytest.mark.slow
def test_fresh_tensorflow_process_serves_generate_captions(exported, image_files):
    served = serve_in_fresh_process(exported, image_files)
    assert served["modules"] == []  # no vlm (and no keras needed by the caller)
    model = load_captioner(MODEL)
    expected = model.generate(decoded(image_files), return_details=True)
    assert served["captions"] == expected["captions"]
    np.testing.assert_allclose(served["log_probs"], expected["log_probs"], atol=1e-3)


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="two exports compared, both made under TensorFlow whatever the "
                           "backend: run once, on the TensorFlow suite")
@pytest.mark.slow
def test_export_without_xla_serves_the_same_captions(exported, image_files, tmp_path):
    folder = str(tmp_path / "no_xla")
    export(MODEL, folder, xla=False)
    files = image_files[:2]
    assert serve_in_fresh_process(folder, files)["captions"] == \
        serve_in_fresh_process(exported, files)["captions"]


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="the export is made under TensorFlow whatever the backend: "
                           "run once, on the TensorFlow suite")
@pytest.mark.slow
def test_signatures_listed_by_saved_model_cli(exported):
    result = subprocess.run(["saved_model_cli", "show", "--dir", exported, "--all"],
                            capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    default = text[text.index("signature_def['serving_default']"):]
    assert "dtype: DT_STRING" in default.split("outputs")[0]
    assert "shape: (-1)" in default.split("outputs")[0]
    pixels = text[text.index("signature_def['serve_pixels']"):]
    assert "shape: (-1, -1, -1, 3)" in pixels and "DT_FLOAT" in pixels
    for output in ("captions", "log_probs"):
        assert f"outputs['{output}']" in default


@pytest.mark.slow
def test_bad_requests_are_clear_errors_and_empty_batches_work(exported, image_files):
    serving = tf.saved_model.load(exported).signatures["serving_default"]
    jpeg = open(image_files[1], "rb").read()
    for blob, message in [(b"", r"empty \(0 bytes\)"),
                          (b"\x00\x01 random bytes" * 20, "not a JPEG, PNG, GIF, BMP or WebP"),
                          (jpeg[: len(jpeg) // 3], "JPEG"),
                          # A 60-megapixel PNG of 7 kB, refused from its header.
                          (png_bomb(), r"10000x6000 \(60000000 pixels\), over the limit of "
                                       r"50,000,000 pixels .*decompression bomb")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serving(images=tf.constant([open(image_files[0], "rb").read(), blob]))
    empty = serving(images=tf.constant([], tf.string))
    assert empty["captions"].shape == (0,) and empty["log_probs"].shape == (0,)
    pixels = tf.saved_model.load(exported).signatures["serve_pixels"]
    images = np.stack(decoded(image_files[:2])).astype("float32")
    out = pixels(images=tf.constant(images))
    model = load_captioner(MODEL)
    assert [c.decode() for c in out["captions"].numpy()] == model.generate(images)


@pytest.mark.slow
def test_model_trained_on_this_backend_exports_and_serves_its_captions(tmp_path, image_files):
    """Trained briefly under the current backend; exported (via TF); same captions."""
    model = load_captioner(MODEL)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    images = np.stack(decoded(image_files[:4])).astype("float32")
    tokens = np.full((4, model.sequence_length), 0, "int32")
    tokens[:, 0] = model.tokenizer.start_token_id
    model.fit({"images": images, "tokens": tokens}, np.roll(tokens, -1, axis=1),
              epochs=1, verbose=0)
    path = str(tmp_path / f"trained_{keras.config.backend()}.keras")
    model.save(path)
    folder = str(tmp_path / "serving")
    export(path, folder, sampler=BeamSampler(num_beams=3))
    served = serve_in_fresh_process(folder, image_files[:4])
    expected = model.generate(images, sampler=BeamSampler(num_beams=3))
    assert served["captions"] == expected


def test_only_deterministic_samplers_are_served(tmp_path):
    with pytest.raises(ValueError, match="greedy or beam.*Received: sampler=TopKSampler"):
        export(MODEL, str(tmp_path / "x"), sampler="top_k")


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="exports in this process, which needs TensorFlow; the other "
                           "backends' subprocess path is tested with the one-image model")
def test_several_images_per_example_are_one_row_of_bytes(tmp_path):
    """The interleaved design (the sources one differs only in its empty prompt)."""
    from tests.models.test_multi_image_captioner import model as multi_image_model
    from vlm.export.saved_model import export_model

    model = multi_image_model(2, "interleaved")
    rng = np.random.default_rng(0)
    pairs = [[(rng.random((16 + 8 * i, 16, 3)) * 255).astype("uint8") for i in range(2)]
             for _ in range(3)]
    folder = str(tmp_path / "serving")
    export_model(model, folder, max_length=5)
    served = tf.saved_model.load(folder)
    blobs = tf.constant([[encode(image, "PNG") for image in pair] for pair in pairs])
    out = served.signatures["serving_default"](images=blobs)
    expected = model.generate(pairs, max_length=5)
    assert [c.decode() for c in out["captions"].numpy()] == expected
    pixels = np.stack([[model.preprocessor.resize(i).numpy() for i in pair] for pair in pairs])
    out = served.signatures["serve_pixels"](images=tf.constant(pixels))
    assert [c.decode() for c in out["captions"].numpy()] == expected


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="export_model runs in the TensorFlow backend's process")
def test_a_vision_language_model_serves_image_bytes_and_a_prompt_each(tmp_path):
    from tests.models.test_vision_language_model import make_model
    from tests.models.test_vision_language_model import make_tokenizer
    from vlm.export.saved_model import export_model

    model = make_model(make_tokenizer())
    rng = np.random.default_rng(0)
    images = [(rng.random((16 + 8 * i, 16, 3)) * 255).astype("uint8") for i in range(3)]
    prompts = ["question what colour is the small circle answer",
               "Question: is there a square? Answer:", ""]  # normalised as the tokenizer does
    folder = str(tmp_path / "serving")
    export_model(model, folder, max_length=4)
    served = tf.saved_model.load(folder)
    out = served.signatures["serving_default"](
        images=tf.constant([encode(image, "PNG") for image in images]),
        prompts=tf.constant(prompts))
    expected = model.generate(images, prompts=prompts, max_length=4, return_details=True)
    assert [c.decode() for c in out["captions"].numpy()] == expected["captions"]
    np.testing.assert_allclose(out["log_probs"].numpy(), expected["log_probs"], atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="longer than the 11 tokens"):
        served.signatures["serve_pixels"](images=tf.zeros((1, 16, 16, 3)),
                                          prompts=tf.constant(["red " * 12]))
