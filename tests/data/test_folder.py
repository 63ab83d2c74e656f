"""The folder examples source: CSV and JSONL captions files, bad images and captions skipped."""

import json

import keras
import numpy as np
import pytest

from tests.data.caption_examples import S
from tests.data.caption_examples import T
from tests.data.caption_examples import collect
from tests.data.caption_examples import tiny_model
from tests.data.image_files import bad_images
from tests.data.image_files import encode
from tests.data.image_files import odd_images
from tests.data.image_files import scene
from vlm.data.batching import eval_batches
from vlm.data.batching import train_batches
from vlm.data.folder import SkippedInputWarning
from vlm.data.folder import folder_examples
from vlm.data.images import decode_image
from vlm.models.captioner_preprocessor import CaptionerPreprocessor


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
        ("image,caption\na.jpg,a dog\nb.png,caf\xe9\n", 3,
         r"not UTF-8 text \(byte 0xe9 at offset 35\)"),
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
        (['{"image": "a.jpg", "caption": "ok"}', '{"image": "a.jpg", "caption": "x"'], 2,
         "bad JSON"),
        (['{"image": "a.jpg", "caption": "ok"}', '{"image": "a.jpg", "captions": "x"}'], 2,
         "must be a non-empty list"),
        (['{"image": "a.jpg", "caption": 3}'], 1,
         r"caption must be a non-empty string\. Received: 3"),
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


# ------------------------------------------------------------ bad images and captions in folders

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
    batches = train_batches(examples, CaptionerPreprocessor(tokenizer, S, T),
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
    images = eval_batches(examples, CaptionerPreprocessor(tokenizer, S, T), batch_size=4)
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
    batches = train_batches(examples, CaptionerPreprocessor(tokenizer, S, T),
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
