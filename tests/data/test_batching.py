"""train_batches, count_pairs and eval_batches: the batches `fit` and evaluation read."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tests.data.caption_examples import CAPTIONS
from tests.data.caption_examples import PAIRS
from tests.data.caption_examples import VOCABULARY
from tests.data.caption_examples import S
from tests.data.caption_examples import T
from tests.data.caption_examples import collect
from tests.data.caption_examples import make_examples
from tests.data.caption_examples import tiny_model
from vlm.data.batching import count_pairs
from vlm.data.batching import eval_batches
from vlm.data.batching import train_batches
from vlm.data.tokenizer import IMAGE
from vlm.data.tokenizer import CaptionTokenizer
from vlm.data.tokenizer import pack_captions
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor


def test_train_batches_shapes_order_and_shifted_labels(tokenizer):
    batches = train_batches(
        make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=2, shuffle_buffer=0
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
        make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=1, seed=3
    )
    images, tokens, labels = collect(batches)
    assert len(tokens) == PAIRS
    expected = collections.Counter()
    for i, caps in enumerate(CAPTIONS):
        for row in pack_captions(tokenizer, [c for c in caps if c != "..."], T).numpy():
            expected[(40 * (i + 1), tuple(row[:-1]))] += 1
    got = collections.Counter(
        (round(float(img.mean())), tuple(tok)) for img, tok in zip(images, tokens)
    )
    assert got == expected


def test_train_batches_with_captions_per_image_group_each_image_once(tokenizer):
    """k=2: each image once per group of 2 of its captions, in consecutive rows."""
    batches = train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T),
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
    batches = train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T),
                            batch_size=3, captions_per_image=3, seed=2, repeat=True)
    for x, _ in batches.take(6).as_numpy_iterator():
        assert x["images"].shape == (1, S, S, 3) and x["tokens"].shape == (3, T)
        # The three captions of a group belong to the group's image.
        color = round(float(x["images"].mean()))
        allowed = {tuple(r[:-1]) for r in pack_captions(
            tokenizer, [c for c in CAPTIONS[color // 40 - 1] if c != "..."], T).numpy()}
        assert {tuple(r) for r in x["tokens"]} <= allowed


def test_train_batches_read_long_captions_more_often(tokenizer):
    """Captions of 3+ words read 3 times, shorter ones once; count_pairs agrees."""
    batches = train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T),
                            batch_size=1, shuffle_buffer=0, long_caption_words=3,
                            long_caption_repeats=3)
    images, tokens, _ = collect(batches)
    captions = [c for caps in CAPTIONS for c in caps if c != "..."]
    read = collections.Counter(tuple(row) for row in tokens)
    expected = collections.Counter()
    for caption, row in zip(captions, pack_captions(tokenizer, captions, T).numpy()):
        expected[tuple(row[:-1])] += 3 if len(caption.split()) >= 3 else 1
    assert read == expected
    assert sum(expected.values()) == 15  # 4 long captions of the 7
    assert count_pairs(make_examples(), long_caption_words=3, long_caption_repeats=3) == 15
    # Repeats stay with their image, and are consecutive before shuffling.
    np.testing.assert_allclose(images[:3].mean(axis=(1, 2, 3)), [40, 40, 40], atol=1e-4)
    with pytest.raises(ValueError, match="long_caption_repeats"):
        train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T),
                      batch_size=1, long_caption_words=3, long_caption_repeats=0)


def test_train_batches_are_deterministic_given_a_seed(tokenizer):
    def order(seed):
        batches = train_batches(
            make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=1, seed=seed
        )
        return collect(batches)[1].tolist()

    first = order(1)
    assert order(1) == first
    assert order(2) != first  # 7! orders: these two seeds differ


def test_train_batches_repeat(tokenizer):
    batches = train_batches(
        make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=4, repeat=True
    )
    assert len(list(batches.take(5))) == 5  # more than the 7 pairs of one pass


def test_train_batches_repeat_is_one_stream_that_skip_resumes(tokenizer):
    """Every iterator reads the same repeated stream: `skip(n)` resumes a run."""
    batches = train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T),
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
        train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=0)
    with pytest.raises(ValueError, match="batch_size=6, captions_per_image=4"):
        train_batches(make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=6,
                      captions_per_image=4)
    images_only = tf.data.Dataset.from_tensors({"image": tf.zeros((4, 4, 3), tf.uint8)})
    with pytest.raises(ValueError, match="missing key 'captions'"):
        train_batches(images_only, CaptionerPreprocessor(tokenizer, S, T), batch_size=1)


def test_eval_batches_pad_references_and_pass_through_other_keys(tokenizer):
    batches = eval_batches(make_examples(extra=True), CaptionerPreprocessor(tokenizer, S, T),
                           batch_size=2, max_references=3)
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



# ---------------------------------------------------------------- fit on every backend


def test_train_batches_feed_fit(tokenizer):
    """A tiny model trains on train_batches under the current Keras backend."""
    model = tiny_model()
    batches = train_batches(
        make_examples(), CaptionerPreprocessor(tokenizer, S, T), batch_size=2, repeat=True
    )
    history = model.fit(batches, epochs=2, steps_per_epoch=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # Untrained, the loss is about log(vocabulary size).
    assert abs(losses[0] - np.log(len(VOCABULARY))) < 1.0


def test_examples_of_image_pairs_with_markers_before_each_caption():
    """shapes_change examples: (2, H, W, 3) images, `<image>` ids first, no loss on them."""
    from vlm.datasets.shapes.changes import generate_change_examples

    rows = list(generate_change_examples(4, seed=0, image_size=24))
    examples = tf.data.Dataset.from_tensor_slices({
        "images": np.stack([r["images"] for r in rows]),
        "captions": [r["captions"][:3] for r in rows],
        "image_id": [r["image_id"] for r in rows],
        "change": [r["change"] for r in rows],
    })
    tokenizer = CaptionTokenizer(vocabulary=VOCABULARY + [IMAGE])
    preprocessor = MultiImagePreprocessor(tokenizer, 16, 12, num_images=2)
    marker = tokenizer.token_to_id(IMAGE)
    batches = train_batches(examples, preprocessor, batch_size=6, captions_per_image=3,
                            shuffle_buffer=0)
    (inputs, labels), = list(batches.take(1).as_numpy_iterator())
    assert inputs["images"].shape == (2, 2, 16, 16, 3)  # 2 pairs x 3 captions
    tokens = inputs["tokens"]
    np.testing.assert_array_equal(tokens[:, :3], [[marker, marker, 2]] * 6)
    np.testing.assert_array_equal(labels[:, :2], 0)  # the markers predict nothing
    np.testing.assert_array_equal(labels[:, 2:-1], tokens[:, 3:])  # then teacher forcing
    caption = pack_captions(tokenizer, [rows[0]["captions"][0]], 10).numpy()[0]
    np.testing.assert_array_equal(tokens[0, 2:], caption[:-1])
    evaluation = next(iter(eval_batches(examples, preprocessor, batch_size=4)))
    assert evaluation["images"].shape == (4, 2, 16, 16, 3)
    assert evaluation["change"].numpy()[0].decode() == rows[0]["change"]


def test_answers_after_question_prompts_and_the_text_alone(tokenizer):
    """shapes_qa examples: `prompt [START] answer [END]`, the loss on the answer only."""
    from vlm.data.batching import text_batches
    from vlm.data.tokenizer import prompted_captions

    examples = tf.data.Dataset.from_tensor_slices({
        "image": np.zeros((2, 8, 8, 3), "uint8"),
        "captions": [["a dog", "grass"], ["a cat", "a dog"]],
        "prompts": [["a dog on", "the dog on the grass a cat"], ["on", ""]],
        "scene_captions": [["a dog on the grass"], ["a cat"]],
        "image_id": [0, 1],
    })
    batches = train_batches(examples, CaptionerPreprocessor(tokenizer, 8, 8),
                            batch_size=4, captions_per_image=2, shuffle_buffer=0)
    (inputs, labels), = list(batches.take(1).as_numpy_iterator())
    ids = {w: tokenizer.token_to_id(w) for w in ("a", "dog", "on", "the", "grass", "cat")}
    start, end = 2, 3
    np.testing.assert_array_equal(inputs["tokens"][0], [ids["a"], ids["dog"], ids["on"], start,
                                                        ids["a"], ids["dog"], end, 0])
    np.testing.assert_array_equal(labels[0], [0, 0, 0, ids["a"], ids["dog"], end, 0, 0])
    # Too long: the prompt's head goes, the answer and [END] stay.
    np.testing.assert_array_equal(inputs["tokens"][1], [ids["dog"], ids["on"], ids["the"],
                                                        ids["grass"], ids["a"], ids["cat"],
                                                        start, ids["grass"]])
    np.testing.assert_array_equal(labels[1], [0] * 6 + [ids["grass"], end])
    np.testing.assert_array_equal(inputs["tokens"][3], [start, ids["a"], ids["dog"], end,
                                                        0, 0, 0, 0])  # "" prompt
    np.testing.assert_array_equal(labels[3], [ids["a"], ids["dog"], end, 0, 0, 0, 0, 0])
    # Language-model rows: every (prompt, answer) and scene caption, the prompt learned too.
    texts = list(text_batches(examples, tokenizer, sequence_length=8, batch_size=6,
                              shuffle_buffer=0).as_numpy_iterator())
    (rows, text_labels), = texts
    assert rows["tokens"].shape == (6, 8)  # 2 x (2 answers + 1 scene caption)
    np.testing.assert_array_equal(rows["tokens"][2], [start, ids["a"], ids["dog"], ids["on"],
                                                      ids["the"], ids["grass"], end, 0])
    tokens, expected = prompted_captions(tokenizer, ["a dog on"], ["a dog"], 8,
                                         loss_on_prompt=True)
    np.testing.assert_array_equal(rows["tokens"][0], tokens.numpy()[0])
    np.testing.assert_array_equal(text_labels[0], [ids["dog"], ids["on"], 0, ids["a"],
                                                   ids["dog"], end, 0, 0])
    # With the scene written out: each (prompt, answer) once more, after caption i mod n.
    # Their loss falls on the answer alone.
    (rows, scene_labels), = list(text_batches(
        examples, tokenizer, sequence_length=12, batch_size=10, shuffle_buffer=0,
        scene_context=True).as_numpy_iterator())
    scene_tokens, answer_labels = prompted_captions(
        tokenizer, ["a dog on the grass a dog on", "a dog on the grass the dog on the grass a cat"],
        ["a dog", "grass"], 12)
    np.testing.assert_array_equal(rows["tokens"][2:4], scene_tokens.numpy())
    np.testing.assert_array_equal(scene_labels[2:4], answer_labels.numpy())
    np.testing.assert_array_equal(scene_labels[2], [0] * 8 + [ids["a"], ids["dog"], end, 0])
    # A per-row choice equals the batch-wide one, row by row.
    _, mixed = prompted_captions(tokenizer, ["a dog on", "on"], ["a dog", "grass"], 8,
                                 loss_on_prompt=[True, False])
    _, learned = prompted_captions(tokenizer, ["a dog on"], ["a dog"], 8, loss_on_prompt=True)
    np.testing.assert_array_equal(mixed.numpy()[0], learned.numpy()[0])
    assert mixed.numpy()[1].tolist() == [0, ids["grass"], end, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(rows["tokens"][:2], text_batches(
        examples, tokenizer, sequence_length=12, batch_size=2,
        shuffle_buffer=0).take(1).get_single_element()[0]["tokens"].numpy())
    assert rows["tokens"].shape == (10, 12)  # 2 x (2 answers twice + 1 scene caption)
