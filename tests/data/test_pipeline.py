"""Image decoding/resizing, example sources and the train/eval tf.data pipelines."""

import collections
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data.image_files import bad_images
from tests.data.image_files import encode
from tests.data.image_files import odd_images
from tests.data.image_files import scene
from vlm.data.images import decode_image
from vlm.data.images import load_image
from vlm.data.images import preprocess_image
from vlm.data.paths import cache_dir
from vlm.data.paths import tfds_data_dir
from vlm.data.pipeline import SkippedInputWarning
from vlm.data.pipeline import coco_examples
from vlm.data.pipeline import eval_batches
from vlm.data.pipeline import folder_examples
from vlm.data.pipeline import count_pairs
from vlm.data.pipeline import train_batches
from vlm.data.tokenizer import END
from vlm.data.tokenizer import PAD
from vlm.data.tokenizer import START
from vlm.data.tokenizer import UNK
from vlm.data.tokenizer import CaptionTokenizer
from vlm.data.tokenizer import pack_captions

S = 8  # image side after resizing
T = 6  # sequence length
VOCABULARY = [PAD, UNK, START, END, "a", "dog", "runs", "on", "the", "grass", "cat", "##s",
              "red", "ball", "sits", "two"]


@pytest.fixture(scope="module")
def tokenizer():
    return CaptionTokenizer(vocabulary=VOCABULARY)


def pil_resize(image, size):
    """Reference for preprocess_image: PIL's antialiased bilinear filter, per channel in float."""
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((size, size), Image.BILINEAR))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


# Distinct captions per image (image i is filled with the value 40 * (i + 1)).
CAPTIONS = [
    ["A dog runs.", "the dog on the grass", "..."],  # "..." normalises to "": skipped
    ["A cat sits", "two cats", "a red ball", "the cat"],
    ["Two dogs"],
]
PAIRS = sum(len([c for c in caps if c != "..."]) for caps in CAPTIONS)  # 7


def make_examples(extra=False):
    """Three images of different sizes, each one flat color, with 3, 4 and 1 captions."""
    sizes = [(10, 12), (16, 9), (5, 5)]

    def generate():
        for i, ((h, w), captions) in enumerate(zip(sizes, CAPTIONS)):
            example = {
                "image": np.full((h, w, 3), 40 * (i + 1), np.uint8),
                "captions": np.array(captions, dtype=object),
                "image_id": np.int64(100 + i),
            }
            if extra:
                example["objects"] = {
                    "label": np.arange(i + 1, dtype=np.int64),
                    "size": np.linspace(0.5, 1.0, i + 1).astype(np.float32),
                    "color": np.array(["red"] * (i + 1), dtype=object),
                }
            yield example

    signature = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "captions": tf.TensorSpec((None,), tf.string),
        "image_id": tf.TensorSpec((), tf.int64),
    }
    if extra:
        signature["objects"] = {
            "label": tf.TensorSpec((None,), tf.int64),
            "size": tf.TensorSpec((None,), tf.float32),
            "color": tf.TensorSpec((None,), tf.string),
        }
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def collect(dataset):
    inputs, labels = zip(*[(x, y) for x, y in dataset.as_numpy_iterator()])
    images = np.concatenate([x["images"] for x in inputs])
    tokens = np.concatenate([x["tokens"] for x in inputs])
    return images, tokens, np.concatenate(labels)


# ---------------------------------------------------------------- images


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)


def test_decode_png_gray_rgba_16bit_and_palette(rgb):
    gray = rgb[..., 0]
    np.testing.assert_array_equal(decode_image(encode(gray, "PNG")), np.repeat(gray[..., None], 3, -1))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(rgba, "PNG")), rgb)  # alpha dropped
    sixteen = gray.astype(np.uint16) * 257  # exact 8 -> 16 bit scaling
    png16 = encode(sixteen, "PNG")
    assert Image.open(io.BytesIO(png16)).mode == "I;16"
    np.testing.assert_array_equal(decode_image(png16), np.repeat(gray[..., None], 3, -1))
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(decode_image(encode(palette, "PNG")), np.asarray(palette.convert("RGB")))


def test_decode_gif_first_frame_bmp_jpeg_webp(rgb):
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    gif = decode_image(buffer.getvalue())
    np.testing.assert_array_equal(gif, np.asarray(frames[0].convert("RGB")))

    np.testing.assert_array_equal(decode_image(encode(rgb, "BMP")), rgb)
    np.testing.assert_array_equal(decode_image(encode(rgb[..., 1], "BMP")), np.repeat(rgb[..., 1:2], 3, -1))
    np.testing.assert_array_equal(decode_image(encode(rgb, "WEBP", lossless=True)), rgb)

    # TensorFlow's JPEG decoder uses a faster inverse DCT than PIL's: a few levels apart.
    smooth = np.broadcast_to(np.linspace(60, 180, 16, dtype=np.uint8)[None, :, None], (16, 16, 3)).copy()
    jpeg = encode(smooth, "JPEG", quality=95)
    decoded = decode_image(jpeg)
    assert decoded.dtype == tf.uint8 and decoded.shape == (16, 16, 3)
    reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert np.abs(decoded.numpy().astype(int) - reference).max() <= 3
    gray_jpeg = decode_image(encode(smooth[..., 0], "JPEG", quality=95))
    assert gray_jpeg.shape == (16, 16, 3)


def test_decode_image_inside_tf_data(rgb):
    dataset = tf.data.Dataset.from_tensor_slices([encode(rgb, "PNG"), encode(rgb[..., 0], "PNG")])
    dataset = dataset.map(decode_image)
    assert dataset.element_spec.shape.as_list() == [None, None, 3]
    shapes = [image.shape for image in dataset.as_numpy_iterator()]
    assert shapes == [(6, 7, 3), (6, 7, 3)]


@pytest.mark.parametrize("size", [4, 5, 16])
def test_preprocess_image_matches_pil_bilinear(size):
    image = np.random.default_rng(size).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    out = preprocess_image(image, size)
    assert out.dtype == tf.float32 and out.shape == (size, size, 3)
    np.testing.assert_allclose(out, pil_resize(image, size), atol=1e-3)
    assert 0.0 <= out.numpy().min() and out.numpy().max() <= 255.0


def test_preprocess_image_clips_and_validates():
    out = preprocess_image(np.full((4, 4, 3), 300.0, np.float32), 2)
    np.testing.assert_array_equal(out, np.full((2, 2, 3), 255.0))
    with pytest.raises(ValueError, match="image_size=0"):
        preprocess_image(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 4\)"):
        preprocess_image(np.zeros((4, 4), np.uint8), 2)


def test_load_image(tmp_path, rgb):
    path = tmp_path / "x.png"
    path.write_bytes(encode(rgb, "PNG"))
    np.testing.assert_array_equal(load_image(path), rgb)
    np.testing.assert_allclose(load_image(str(path), 4), pil_resize(rgb, 4), atol=1e-3)


# ---------------------------------------------------------------- train / eval batches


def test_train_batches_shapes_order_and_shifted_labels(tokenizer):
    batches = train_batches(
        make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=2, shuffle_buffer=0
    )
    images_spec, tokens_spec = batches.element_spec[0]["images"], batches.element_spec[0]["tokens"]
    assert images_spec.shape == (2, S, S, 3) and images_spec.dtype == tf.float32
    assert tokens_spec.shape == (2, T) and tokens_spec.dtype == tf.int32
    assert batches.element_spec[1].shape == (2, T) and batches.element_spec[1].dtype == tf.int32

    images, tokens, labels = collect(batches)
    # 7 pairs, batch 2, drop_remainder: the 7th pair is dropped.
    assert len(tokens) == 6
    captions = [c for caps in CAPTIONS for c in caps if c != "..."]
    packed = pack_captions(tokenizer, captions, T).numpy()
    np.testing.assert_array_equal(tokens, packed[:6, :-1])
    np.testing.assert_array_equal(labels, packed[:6, 1:])
    np.testing.assert_array_equal(tokens[:, 1:], labels[:, :-1])
    np.testing.assert_array_equal(tokens[0], [2, 4, 5, 6, 3, 0])  # [START] a dog runs [END] [PAD]
    np.testing.assert_array_equal(labels[0], [4, 5, 6, 3, 0, 0])
    # Each pair carries its own image (flat colors 40, 80, 120), resized to S x S.
    image_of_pair = [40, 40, 80, 80, 80, 80]
    np.testing.assert_allclose(images, np.array(image_of_pair, np.float32)[:, None, None, None]
                               * np.ones((1, S, S, 3)), atol=1e-4)


def test_train_batches_one_pair_per_caption_with_shuffling(tokenizer):
    batches = train_batches(
        make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=1, seed=3
    )
    images, tokens, labels = collect(batches)
    assert len(tokens) == PAIRS
    expected = collections.Counter()
    for i, caps in enumerate(CAPTIONS):
        for row in pack_captions(tokenizer, [c for c in caps if c != "..."], T).numpy():
            expected[(40 * (i + 1), tuple(row[:-1]))] += 1
    got = collections.Counter((round(float(img.mean())), tuple(tok)) for img, tok in zip(images, tokens))
    assert got == expected


def test_train_batches_with_captions_per_image_group_each_image_once(tokenizer):
    """k=2: each image once per group of 2 of its captions, in consecutive rows."""
    batches = train_batches(make_examples(), tokenizer, image_size=S, sequence_length=T,
                            batch_size=4, captions_per_image=2, shuffle_buffer=0)
    assert batches.element_spec[0]["images"].shape == (2, S, S, 3)
    assert batches.element_spec[0]["tokens"].shape == (4, T)
    assert batches.element_spec[1].shape == (4, T)
    (x0, y0), (x1, y1) = list(batches.as_numpy_iterator())
    # Image 0 keeps 2 captions, image 1 has 4 (two groups), image 2 has one,
    # repeated to fill its group: 4 groups, 8 pairs, 2 batches.
    groups = [["A dog runs.", "the dog on the grass"], ["A cat sits", "two cats"],
              ["a red ball", "the cat"], ["Two dogs", "Two dogs"]]
    packed = pack_captions(tokenizer, [c for g in groups for c in g], T).numpy()
    np.testing.assert_array_equal(np.concatenate([x0["tokens"], x1["tokens"]]), packed[:, :-1])
    np.testing.assert_array_equal(np.concatenate([y0, y1]), packed[:, 1:])
    image_values = [40, 80, 80, 120]
    np.testing.assert_allclose(np.concatenate([x0["images"], x1["images"]]),
                               np.array(image_values, np.float32)[:, None, None, None]
                               * np.ones((1, S, S, 3)), atol=1e-4)
    assert count_pairs(make_examples(), captions_per_image=2) == 8
    assert count_pairs(make_examples()) == PAIRS


def test_train_batches_with_captions_per_image_shuffle_whole_groups(tokenizer):
    batches = train_batches(make_examples(), tokenizer, image_size=S, sequence_length=T,
                            batch_size=3, captions_per_image=3, seed=2, repeat=True)
    for x, _ in batches.take(6).as_numpy_iterator():
        assert x["images"].shape == (1, S, S, 3) and x["tokens"].shape == (3, T)
        # The three captions of a group belong to the group's image.
        color = round(float(x["images"].mean()))
        allowed = {tuple(r[:-1]) for r in pack_captions(
            tokenizer, [c for c in CAPTIONS[color // 40 - 1] if c != "..."], T).numpy()}
        assert {tuple(r) for r in x["tokens"]} <= allowed


def test_train_batches_are_deterministic_given_a_seed(tokenizer):
    def order(seed):
        batches = train_batches(
            make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=1, seed=seed
        )
        return collect(batches)[1].tolist()

    first = order(1)
    assert order(1) == first
    assert order(2) != first  # 7! orders: these two seeds differ


def test_train_batches_repeat(tokenizer):
    batches = train_batches(
        make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=4, repeat=True
    )
    assert len(list(batches.take(5))) == 5  # more than the 7 pairs of one pass


def test_train_batches_repeat_is_one_stream_that_skip_resumes(tokenizer):
    """Every iterator reads the same repeated stream: `skip(n)` resumes a run."""
    batches = train_batches(make_examples(), tokenizer, image_size=S, sequence_length=T,
                            batch_size=1, seed=3, repeat=True)

    def tokens(dataset, n):
        return [x["tokens"].tolist() for x, _ in dataset.take(n).as_numpy_iterator()]

    stream = tokens(batches, 21)  # three passes over the 7 pairs
    assert tokens(batches, 21) == stream  # a second iterator: the same stream
    assert tokens(batches.skip(9), 12) == stream[9:]
    assert sorted(stream[:7]) == sorted(stream[7:14])  # each pass has every pair once,
    assert stream[:7] != stream[7:14]  # in a new order


def test_train_batches_rejects_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="batch_size=0"):
        train_batches(make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=0)
    with pytest.raises(ValueError, match="batch_size=6, captions_per_image=4"):
        train_batches(make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=6,
                      captions_per_image=4)
    images_only = tf.data.Dataset.from_tensors({"image": tf.zeros((4, 4, 3), tf.uint8)})
    with pytest.raises(ValueError, match="missing key 'captions'"):
        train_batches(images_only, tokenizer, image_size=S, sequence_length=T, batch_size=1)


def test_eval_batches_pad_references_and_pass_through_other_keys():
    batches = eval_batches(make_examples(extra=True), image_size=S, batch_size=2, max_references=3)
    spec = batches.element_spec
    assert spec["images"].shape.as_list() == [None, S, S, 3] and spec["images"].dtype == tf.float32
    assert spec["captions"].shape.as_list() == [None, 3]
    first, second = list(batches.as_numpy_iterator())
    assert first["images"].shape == (2, S, S, 3) and second["images"].shape == (1, S, S, 3)
    np.testing.assert_allclose(first["images"][1], np.full((S, S, 3), 80.0), atol=1e-4)
    assert first["captions"].tolist() == [
        [b"A dog runs.", b"the dog on the grass", b"..."],
        [b"A cat sits", b"two cats", b"a red ball"],  # 4 references truncated to 3
    ]
    assert second["captions"].tolist() == [[b"Two dogs", b"", b""]]  # padded with ""
    assert first["image_id"].tolist() == [100, 101]
    # Variable-length extras: ints and floats padded with -1, strings with "".
    assert first["objects"]["label"].tolist() == [[0, -1], [0, 1]]
    np.testing.assert_allclose(first["objects"]["size"], [[0.5, -1.0], [0.5, 1.0]])
    assert first["objects"]["color"].tolist() == [[b"red", b""], [b"red", b"red"]]


# ---------------------------------------------------------------- COCO (TFDS mock)


def test_coco_examples_from_mock_tfds_feed_train_batches(tmp_path, tokenizer):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        examples = coco_examples("train", data_dir=tmp_path)
        spec = examples.element_spec
        assert spec["image"].dtype == tf.uint8 and spec["image"].shape.as_list() == [None, None, 3]
        assert spec["captions"].dtype == tf.string and spec["captions"].shape.rank == 1
        assert spec["image_id"].dtype == tf.int64
        assert sorted(spec) == ["captions", "image", "image_id"]
        batches = train_batches(examples, tokenizer, image_size=S, sequence_length=T, batch_size=3)
        for inputs, labels in batches.take(2).as_numpy_iterator():
            assert inputs["images"].shape == (3, S, S, 3) and inputs["images"].dtype == np.float32
            assert inputs["tokens"].shape == (3, T) and labels.shape == (3, T)
            assert (inputs["tokens"][:, 0] == 2).all()
            np.testing.assert_array_equal(inputs["tokens"][:, 1:], labels[:, :-1])
        evaluation = next(iter(eval_batches(examples, image_size=S, batch_size=4)))
        assert evaluation["captions"].shape == (4, 5)


def test_coco_examples_without_data_says_how_to_get_it(tmp_path):
    with pytest.raises(ValueError, match="download=True"):
        coco_examples("val", data_dir=tmp_path)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    assert tfds_data_dir() == tmp_path / "tensorflow_datasets"
    monkeypatch.delenv("VLM_CACHE_DIR")
    assert str(cache_dir()).endswith("/.cache/vlm")


# ---------------------------------------------------------------- folders


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(encode(np.full((6, 5, 3), 50, np.uint8), "JPEG"))
    (folder / "b.png").write_bytes(encode(np.full((4, 7), 200, np.uint8), "PNG"))
    (folder / "notes.jpg").write_bytes(b"not an image")
    return folder


def read_all(examples):
    return {
        ex["image_id"].decode(): (ex["image"], [c.decode() for c in ex["captions"]])
        for ex in examples.as_numpy_iterator()
    }


def test_folder_examples_csv(tmp_path, image_folder):
    path = tmp_path / "captions.csv"
    path.write_text(
        "image,caption\n"
        "a.jpg,A dog runs.\n"
        'b.png,"A cat, sitting, says ""hi"""\n'
        "\n"
        "a.jpg,the dog on the grass\n"
    )
    examples = folder_examples(path, image_folder)
    got = read_all(examples)
    assert list(got) == ["a.jpg", "b.png"]
    assert got["a.jpg"][1] == ["A dog runs.", "the dog on the grass"]
    assert got["b.png"][1] == ['A cat, sitting, says "hi"']
    assert got["a.jpg"][0].shape == (6, 5, 3) and got["b.png"][0].shape == (4, 7, 3)
    np.testing.assert_array_equal(got["b.png"][0], np.full((4, 7, 3), 200))


def test_folder_examples_jsonl_both_forms_default_image_dir(image_folder):
    path = image_folder / "captions.jsonl"
    lines = [
        {"image": "a.jpg", "caption": "A dog runs."},
        {"image": "b.png", "captions": ["a cat", "two cats"]},
        {"image": "a.jpg", "captions": ["the dog"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    got = read_all(folder_examples(path))
    assert got["a.jpg"][1] == ["A dog runs.", "the dog"]
    assert got["b.png"][1] == ["a cat", "two cats"]


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("image,caption\na.jpg,ok\n\nb.png\n", 4, r"expected 2 columns"),
        ("image,caption\nb.png,a cat, sitting\n", 2, r"found 3.*quote captions"),
        ("image,caption\n,a dog\n", 2, r"image name must be a non-empty string"),
        ("img,text\na.jpg,a dog\n", 1, r"header must name the columns"),
        ("image,caption\na.jpg,a dog\nb.png,caf\xe9\n", 3, r"not UTF-8 text \(byte 0xe9 at offset 35\)"),
    ],
)
def test_folder_examples_csv_errors(tmp_path, image_folder, text, line, match):
    path = tmp_path / "captions.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=match) as error:
        folder_examples(path, image_folder)
    assert f"captions.csv, line {line}:" in str(error.value)


@pytest.mark.parametrize(
    "lines, line, match",
    [
        (['{"image": "a.jpg", "caption": "ok"}', '{"image": "a.jpg", "caption": "x"'], 2, "bad JSON"),
        (['{"image": "a.jpg", "caption": "ok"}', '{"image": "a.jpg", "captions": "x"}'], 2,
         "must be a non-empty list"),
        (['{"image": "a.jpg", "caption": 3}'], 1, r"caption must be a non-empty string\. Received: 3"),
        (['{"image": 7, "caption": "a dog"}'], 1, "image name must be a non-empty string"),
        (['{"image": "a.jpg"}'], 1, "exactly one of the keys"),
        (['{"image": "a.jpg", "caption": "x"}', '["a.jpg", "x"]'], 2, "expected a JSON object"),
    ],
)
def test_folder_examples_jsonl_errors(tmp_path, image_folder, lines, line, match):
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match) as error:
        folder_examples(path, image_folder)
    assert f"captions.jsonl, line {line}:" in str(error.value)


def test_folder_examples_missing_file_or_folder(tmp_path, image_folder):
    with pytest.raises(ValueError, match="captions file not found"):
        folder_examples(tmp_path / "nope.csv", image_folder)
    path = tmp_path / "captions.csv"
    path.write_text("image,caption\n")
    with pytest.raises(ValueError, match="no captions found"):
        folder_examples(path, image_folder)
    with pytest.raises(ValueError, match="image folder not found"):
        folder_examples(path, tmp_path / "nowhere")


# ---------------------------------------------------------------- bad images and captions in folders

# Images of the messy folder in file order; bad ones are named in BAD_ROWS.
GOOD = ["gray.png", "rgba.png", "deep.png", "scene.jpg", "scene.gif", "scene.bmp", "scene.webp"]
GOOD_CAPTIONS = {"gray.png": 2}  # the others have one caption each


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Images in every odd mode, broken files, a bomb, a missing file, and one CSV."""
    folder = tmp_path_factory.mktemp("messy")
    picture = scene(32, 32)
    files = {**odd_images(picture), **bad_images(picture)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    rows = ["image,caption"] + [f"{name},a dog runs" for name in files]
    rows += ["missing.png,a cat", "gray.png,two cats"]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder, picture


def test_folder_skips_bad_images_names_them_and_counts_them(messy_folder, capfd):
    folder, picture = messy_folder
    captions = folder / "captions.csv"
    with pytest.warns(SkippedInputWarning) as record:
        examples = folder_examples(captions)
    assert [str(w.message) for w in record] == [
        f"{captions}, line 9: skipping image 'empty.jpg': empty file (0 bytes)",
        f"{captions}, line 10: skipping image 'notes.png': not a JPEG, PNG, GIF, BMP or WebP file",
        f"{captions}, line 12: skipping image 'bomb.png': the image is 10000x6000 (60.0 "
        "megapixels), over the limit of 50 megapixels (MAX_IMAGE_PIXELS): refused before "
        "decoding as a possible decompression bomb",
        f"{captions}, line 13: skipping image 'missing.png': not found in {folder}",
    ]
    for attempt in range(2):  # every pass skips, names and counts again
        got = read_all(examples)
        err = capfd.readouterr().err
        assert list(got) == GOOD
        assert [len(c) for _, c in got.values()] == [2, 1, 1, 1, 1, 1, 1]
        gray = np.repeat(picture.mean(-1).astype(np.uint8)[..., None], 3, -1)
        np.testing.assert_array_equal(got["gray.png"][0], gray)
        np.testing.assert_array_equal(got["deep.png"][0], gray)  # 16 -> 8 bits exactly
        np.testing.assert_array_equal(got["rgba.png"][0], picture)  # alpha dropped
        np.testing.assert_array_equal(got["scene.bmp"][0], picture)
        np.testing.assert_array_equal(got["scene.webp"][0], picture)
        # The JPEG decoder the SavedModel and the caption command use.
        jpeg = decode_image((folder / "scene.jpg").read_bytes()).numpy()
        np.testing.assert_array_equal(got["scene.jpg"][0], jpeg)
        assert np.abs(jpeg.astype(int) - picture).mean() < 5
        assert err.count(f"warning: {captions}: skipping image 'truncated.jpg': it could not "
                         "be read or decoded (truncated or corrupt)") == 1
        assert err.count(f"warning: {captions}: skipped 5 of 12 images this pass (4 refused "
                         "when listed, 1 undecodable)") == 1


def test_a_bad_image_does_not_abort_an_epoch(messy_folder, tokenizer, capfd):
    folder, _ = messy_folder
    with pytest.warns(SkippedInputWarning):
        examples = folder_examples(folder / "captions.csv")
    batches = train_batches(examples, tokenizer, image_size=S, sequence_length=T,
                            batch_size=2, shuffle_buffer=0)
    steps = []
    count = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: steps.append(0),
        on_train_batch_end=lambda batch, logs: steps.__setitem__(-1, steps[-1] + 1))
    history = tiny_model().fit(batches, epochs=2, shuffle=False, verbose=0, callbacks=[count])
    # 8 (image, caption) pairs of the 7 good images: 4 batches an epoch, both epochs.
    # (Not optimizer.iterations: Keras' TF backend counts one more per epoch
    # on a dataset of unknown length.)
    assert steps == [4, 4]
    assert np.all(np.isfinite(history.history["loss"]))
    assert capfd.readouterr().err.count("skipped 5 of 12 images this pass") >= 2
    images = eval_batches(examples, image_size=S, batch_size=4)
    assert sum(len(b["image_id"]) for b in images.as_numpy_iterator()) == 7


def test_folder_with_no_readable_image_is_an_error(messy_folder, tmp_path):
    folder, _ = messy_folder
    path = tmp_path / "captions.csv"
    path.write_text("image,caption\nempty.jpg,a dog\nbomb.png,a cat\n")
    with pytest.warns(SkippedInputWarning) as record, \
            pytest.raises(ValueError, match="none of its 2 images can be read"):
        folder_examples(path, folder)
    assert ["empty.jpg" in str(w.message) for w in record] == [True, False]
    assert "'bomb.png': the image is 10000x6000" in str(record[1].message)


def test_folder_captions_empty_very_long_and_emoji(tmp_path, image_folder, tokenizer):
    long_caption = "A dog runs on the grass " * 2000  # 12,000 words
    path = tmp_path / "captions.csv"
    path.write_text(
        "image,caption\n"
        "a.jpg,A dog runs.\n"
        "a.jpg,   \n"
        f"a.jpg,{long_caption}\n"
        "b.png,\U0001f436 \u00fcber dog\n"
        "c.jpg,\n",  # c.jpg has no caption: skipped before its file is even looked at
        encoding="utf-8")
    with pytest.warns(SkippedInputWarning) as record:
        examples = folder_examples(path, image_folder)
    assert [str(w.message) for w in record] == [
        f"{path}, line 3: skipping an empty caption of image 'a.jpg'",
        f"{path}, line 6: skipping an empty caption of image 'c.jpg'",
        f"{path}, line 6: skipping image 'c.jpg': it has no non-empty caption",
    ]
    got = read_all(examples)
    assert list(got) == ["a.jpg", "b.png"]
    assert got["b.png"][1] == ["\U0001f436 \u00fcber dog"]
    batches = train_batches(examples, tokenizer, image_size=S, sequence_length=T,
                            batch_size=3, shuffle_buffer=0)
    _, tokens, labels = collect(batches)
    np.testing.assert_array_equal(tokens, [
        [2, 4, 5, 6, 3, 0],  # [START] a dog runs [END]
        [2, 4, 5, 6, 7, 8],  # 12,000 words cut to T - 1 = 5 pieces ...
        [2, 1, 1, 5, 3, 0],  # the emoji and "über" are [UNK]
    ])
    np.testing.assert_array_equal(labels[1], [4, 5, 6, 7, 8, 3])  # ... and still ended


def test_folder_jsonl_skips_empty_captions(image_folder):
    path = image_folder / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "captions": ["", "a dog", " "]}\n'
                    '{"image": "b.png", "caption": "\u6771\u4eac \U0001f431"}\n')
    with pytest.warns(SkippedInputWarning, match="line 1: skipping an empty caption"):
        got = read_all(folder_examples(path))
    assert got["a.jpg"][1] == ["a dog"] and got["b.png"][1] == ["\u6771\u4eac \U0001f431"]


# ---------------------------------------------------------------- fit on every backend


def tiny_model():
    """Pooled pixels + token embeddings -> logits: trains in a second on any backend."""
    keras.utils.set_random_seed(0)
    images = keras.Input((S, S, 3), name="images")
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(images))
    image_features = keras.layers.Dense(8)(pooled)
    text_features = keras.layers.Embedding(len(VOCABULARY), 8)(tokens)
    hidden = text_features + keras.ops.expand_dims(image_features, 1)  # (batch, T, 8)
    logits = keras.layers.Dense(len(VOCABULARY))(hidden)
    model = keras.Model({"images": images, "tokens": tokens}, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    return model


def test_train_batches_feed_fit(tokenizer):
    """A tiny model trains on train_batches under the current Keras backend."""
    model = tiny_model()
    batches = train_batches(
        make_examples(), tokenizer, image_size=S, sequence_length=T, batch_size=2, repeat=True
    )
    history = model.fit(batches, epochs=2, steps_per_epoch=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # Untrained, the loss is about log(vocabulary size).
    assert abs(losses[0] - np.log(len(VOCABULARY))) < 1.0
