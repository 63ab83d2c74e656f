"""Caption normalisation, vocabulary learning, tokenization, packing and saving."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.preset_stand_ins import gemma_tokenizer
from tests.preset_stand_ins import gpt2_tokenizer
from vlm.config import ModelConfig
from vlm.data.tokenizer import END
from vlm.data.tokenizer import PAD
from vlm.data.tokenizer import SPECIAL_TOKENS
from vlm.data.tokenizer import START
from vlm.data.tokenizer import UNK
from vlm.data.tokenizer import CaptionTokenizer
from vlm.data.tokenizer import detokenize_captions
from vlm.data.tokenizer import normalize_caption
from vlm.data.tokenizer import pack_captions
from vlm.data.tokenizer import prompted_captions
from vlm.data.tokenizer import special_token_ids
from vlm.data.tokenizer import tf_normalize_caption
from vlm.data.tokenizer import train_tokenizer

# Hand-checked: lowercase, apostrophes deleted, punctuation -> space, spaces collapsed.
NORMALIZED = {
    "A dog.": "a dog",
    "  A man's DOG, jumping!\n": "a mans dog jumping",
    "Hello\tWORLD...": "hello world",
    "t-shirt & jeans": "t shirt jeans",
    "x_y[z]{w}|~^$+<=>@#%*\"": "x y z w",
    "It's 2 o'clock;  \r\n time: (now)": "its 2 oclock time now",
    "`quoted' / slash\\back": "quoted slash back",
    "": "",
    " ... ": "",
    "\u201cCurly\u201d \u2014 dash, don\u2019t": "curly dash dont",
    "A\x00NUL\x07byte": "a nul byte",  # TF's lower() used to stop at the NUL
}

# A hand-made vocabulary so that packing tests can state exact ids.
VOCABULARY = [PAD, UNK, START, END, "a", "dog", "runs", "on", "the", "grass", "cat", "##s"]


@pytest.fixture(scope="module")
def hand_tokenizer():
    return CaptionTokenizer(vocabulary=VOCABULARY)


@pytest.mark.parametrize("text", sorted(NORMALIZED))
def test_normalize_caption_hand_checked(text):
    assert normalize_caption(text) == NORMALIZED[text]
    assert normalize_caption(text.encode("utf-8")) == NORMALIZED[text]


def test_python_and_tf_normalisation_agree():
    printable = "".join(chr(c) for c in range(32, 127))
    rng = np.random.default_rng(0)
    texts = list(NORMALIZED) + [printable, printable[::-1]]
    texts += ["".join(rng.choice(list(printable + "\t\n"), size=30)) for _ in range(50)]
    got = [t.decode("utf-8") for t in tf_normalize_caption(tf.constant(texts)).numpy()]
    assert got == [normalize_caption(t) for t in texts]


def test_tf_normalisation_in_a_graph_keeps_shape():
    fn = tf.function(tf_normalize_caption)
    out = fn(tf.constant([["A, B", "C!"], ["d", "E  f"]]))
    assert out.shape == (2, 2)
    assert out.numpy().tolist() == [[b"a b", b"c"], [b"d", b"e f"]]


def test_normalize_caption_rejects_non_strings():
    with pytest.raises(TypeError, match="Received: int 3"):
        normalize_caption(3)


def test_learned_vocabulary_has_specials_first_and_frequent_words():
    # The learner keeps whole words seen about 10 times or more.
    captions = ["A dog runs on the grass.", "Two CATS sleep!"] * 10
    tokenizer = train_tokenizer(captions, vocabulary_size=200)
    vocabulary = tokenizer.get_vocabulary()
    assert tuple(vocabulary[:4]) == SPECIAL_TOKENS
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (0, 1)
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (2, 3)
    for word in ["a", "dog", "runs", "on", "the", "grass", "two", "cats", "sleep"]:
        assert word in vocabulary, word
    # Normalised: no capitals, no punctuation.
    assert "Two" not in vocabulary and "." not in vocabulary and "!" not in vocabulary
    assert len(vocabulary) <= 200


def test_train_tokenizer_from_a_dataset_of_caption_vectors():
    examples = tf.data.Dataset.from_tensor_slices(
        tf.constant([["a red ball", "the ball"], ["red ball", "a ball"]] * 5)
    )
    tokenizer = train_tokenizer(examples, vocabulary_size=100)
    assert "ball" in tokenizer.get_vocabulary()
    assert "red" in tokenizer.get_vocabulary()


def test_vocabulary_size_is_an_upper_bound():
    captions = [f"word{i} other{i}" for i in range(30)] * 10
    tokenizer = train_tokenizer(captions, vocabulary_size=40)
    assert len(tokenizer.get_vocabulary()) <= 40


@pytest.mark.parametrize(
    "captions, error, match",
    [
        ([], ValueError, "empty"),
        ("a dog", TypeError, "list of strings"),
        (["a dog", 3], TypeError, r"captions\[1\]=3"),
        (["...", "!"], ValueError, "no words"),
    ],
)
def test_train_tokenizer_errors(captions, error, match):
    with pytest.raises(error, match=match):
        train_tokenizer(captions, vocabulary_size=50)


def test_train_tokenizer_rejects_tiny_vocabulary():
    with pytest.raises(ValueError, match="vocabulary_size=4"):
        train_tokenizer(["a dog"], vocabulary_size=4)


def test_tokenizer_requires_pad_first():
    with pytest.raises(ValueError, match=r"must start with '\[PAD\]'"):
        CaptionTokenizer(vocabulary=[UNK, PAD, START, END, "a"])


def test_tokenize_detokenize_round_trip():
    captions = ["A dog runs on the grass.", "Two dogs sleep on a red mat", "the cat"] * 10
    tokenizer = train_tokenizer(captions, vocabulary_size=200)
    for caption in ["a dog runs on the grass", "the cat sleeps", "two red dogs"]:
        ids = tokenizer(caption)
        assert detokenize_captions(tokenizer, ids) == caption
        assert tokenizer.detokenize(ids) == caption
    # Unnormalised input gives the same ids as its normalised form.
    np.testing.assert_array_equal(tokenizer("The CAT, sleeps!"), tokenizer("the cat sleeps"))


def test_tokenize_is_the_same_eager_and_in_a_graph(hand_tokenizer):
    texts = ["A dog runs on THE grass!", "cats", "the dog's cat", "🐶 dog", "café"]
    eager = hand_tokenizer(texts)
    graph = tf.function(hand_tokenizer.tokenize)(tf.constant(texts)).to_list()
    assert [list(row) for row in eager] == graph
    assert graph == [[4, 5, 6, 7, 8, 9], [10, 11], [8, 5, 11, 10], [1, 5], [1]]


def test_non_ascii_and_emoji_become_unk(hand_tokenizer):
    assert hand_tokenizer("a 🐶 dog").tolist() == [4, 1, 5]
    assert hand_tokenizer("dog🐶").tolist() == [1]  # an unknown character spoils its word
    assert hand_tokenizer("über naïve 東京 dog").tolist() == [1, 1, 1, 1, 5]
    packed = pack_captions(hand_tokenizer, ["🐶🐱", "\u200b\u00a0"], sequence_length=4)
    np.testing.assert_array_equal(packed, [[2, 1, 3, 0, 0], [2, 3, 0, 0, 0]])


def test_pack_captions_exact_ids(hand_tokenizer):
    packed = pack_captions(
        hand_tokenizer, ["A dog runs.", "cats", "", "a dog runs on the grass"], sequence_length=5
    )
    assert packed.dtype == tf.int32
    np.testing.assert_array_equal(
        packed,
        [
            [2, 4, 5, 6, 3, 0],
            [2, 10, 11, 3, 0, 0],
            [2, 3, 0, 0, 0, 0],
            # Truncated: the first sequence_length - 1 = 4 pieces, then [END].
            [2, 4, 5, 6, 7, 3],
        ],
    )
    np.testing.assert_array_equal(pack_captions(hand_tokenizer, "the cat", 3), [2, 8, 10, 3])
    np.testing.assert_array_equal(pack_captions(hand_tokenizer, "the cat", 1), [2, 3])


def test_pack_captions_inside_tf_data(hand_tokenizer):
    dataset = tf.data.Dataset.from_tensor_slices(["A dog runs.", "cats", "the grass"])
    dataset = dataset.batch(2).map(lambda c: pack_captions(hand_tokenizer, c, 4))
    batches = [b.numpy().tolist() for b in dataset]
    assert batches == [[[2, 4, 5, 6, 3], [2, 10, 11, 3, 0]], [[2, 8, 9, 3, 0]]]


def test_pack_captions_ignores_tokenizer_sequence_length():
    tokenizer = CaptionTokenizer(vocabulary=VOCABULARY, sequence_length=8)
    np.testing.assert_array_equal(pack_captions(tokenizer, ["a dog"], 4), [[2, 4, 5, 3, 0]])


def test_pack_captions_rejects_bad_sequence_length(hand_tokenizer):
    with pytest.raises(ValueError, match="sequence_length=0"):
        pack_captions(hand_tokenizer, ["a"], 0)


def test_detokenize_captions_cuts_at_end_and_drops_specials(hand_tokenizer):
    ids = np.array([[2, 4, 5, 3, 6, 0], [2, 10, 11, 0, 0, 0], [2, 3, 0, 0, 0, 0]])
    assert detokenize_captions(hand_tokenizer, ids) == ["a dog", "cats", ""]
    assert detokenize_captions(hand_tokenizer, keras.ops.convert_to_tensor(ids)) == [
        "a dog",
        "cats",
        "",
    ]
    assert detokenize_captions(hand_tokenizer, [4, 5, 3]) == "a dog"


@keras.saving.register_keras_serializable(package="vlm_tests")
class _TokenizerHolder(keras.Model):
    """A model owning a tokenizer, as the captioner does."""

    def __init__(self, tokenizer, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.dense = keras.layers.Dense(2, name="dense")

    def build(self, x_shape):
        self.dense.build(x_shape)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        config = super().get_config()
        config["tokenizer"] = keras.saving.serialize_keras_object(self.tokenizer)
        return config

    @classmethod
    def from_config(cls, config):
        config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)


def test_tokenizer_survives_keras_save_and_load(tmp_path):
    tokenizer = train_tokenizer(["A dog runs on the grass.", "the cats"] * 10, 100)
    model = _TokenizerHolder(tokenizer)
    model(np.zeros((1, 3), "float32"))
    path = os.path.join(tmp_path, "holder.keras")
    model.save(path)

    restored = keras.saving.load_model(path)
    assert isinstance(restored.tokenizer, CaptionTokenizer)
    assert restored.tokenizer.get_vocabulary() == tokenizer.get_vocabulary()
    assert restored.tokenizer.get_config() == tokenizer.get_config()
    texts = ["A dog runs on the grass!", "cats 🐶", "the dogs"]
    assert [list(r) for r in restored.tokenizer(texts)] == [list(r) for r in tokenizer(texts)]
    np.testing.assert_array_equal(
        pack_captions(restored.tokenizer, texts, 6), pack_captions(tokenizer, texts, 6)
    )


def test_tokenizer_config_round_trip(hand_tokenizer):
    config = hand_tokenizer.get_config()
    assert config["vocabulary"] is None  # saved as an asset, not in the config
    revived = CaptionTokenizer.from_config(config)
    revived.set_vocabulary(hand_tokenizer.get_vocabulary())
    assert revived.get_config() == config
    assert revived("a dog").tolist() == [4, 5]


def test_empty_very_long_and_emoji_captions_at_the_model_length(hand_tokenizer):
    """Bad captions packed at the model config's sequence length, eagerly and in tf.data."""
    length = ModelConfig().sequence_length
    captions = [
        "",
        " \t\n ",
        "a dog runs on the grass " * 5000,  # 30,000 words
        "\U0001f436\U0001f431 dog \u6771\u4eac",  # emoji, CJK
        "a\x00dog\u200b",  # control and zero-width characters
        "a" * 10_000,  # one 10,000-letter word
    ]
    pieces = [4, 5, 6, 7, 8, 9] * 4
    expected = np.zeros((len(captions), length + 1), np.int32)
    expected[:, 0] = 2
    expected[0, 1] = expected[1, 1] = 3
    expected[2, 1:] = pieces[: length - 1] + [3]  # truncated, still ends in [END]
    expected[3, 1:6] = [1, 5, 1, 1, 3]  # emoji word, dog, 東, 京 (CJK splits per character)
    expected[4, 1:4] = [4, 5, 3]
    expected[5, 1:3] = [1, 3]  # longer than WordPiece's 100 characters a word
    np.testing.assert_array_equal(pack_captions(hand_tokenizer, captions, length), expected)
    dataset = tf.data.Dataset.from_tensor_slices(captions).batch(3)
    packed = dataset.map(lambda c: pack_captions(hand_tokenizer, c, length))
    np.testing.assert_array_equal(np.concatenate(list(packed.as_numpy_iterator())), expected)


def test_a_learned_vocabulary_maps_unseen_characters_to_unk():
    tokenizer = train_tokenizer(["a dog runs", "the cat sits"] * 20, vocabulary_size=100)
    unk = tokenizer.unk_token_id
    ids = tokenizer("the \U0001f436 sits \u00fcber").tolist()
    assert ids[0] == tokenizer.token_to_id("the") and ids[2] == tokenizer.token_to_id("sits")
    assert ids[1] == unk and ids[3] == unk and len(ids) == 4
    assert detokenize_captions(tokenizer, ids) == "the [UNK] sits [UNK]"



def test_a_language_models_sentencepiece_tokenizer_packs_and_detokenizes():
    """A Gemma preset's tokenizer (here learned offline) in place of vlm's own."""
    tokenizer = gemma_tokenizer()
    assert special_token_ids(tokenizer) == (1, 2, 0)  # <bos>, <eos>, <pad>
    words = [list(np.asarray(tokenizer(text))) for text in ("a small red circle", "is there")]
    packed = pack_captions(tokenizer, ["a small red circle", "is there"], 6).numpy()
    np.testing.assert_array_equal(packed, [[1, *words[0], 2, 0],
                                           [1, *words[1], 2, 0, 0, 0]])
    assert detokenize_captions(tokenizer, packed) == ["a small red circle", "is there"]
    tokens, labels = prompted_captions(tokenizer, ["is there"], ["a red circle"], 8)
    answer = list(np.asarray(tokenizer("a red circle")))
    np.testing.assert_array_equal(tokens, [[*words[1], 1, *answer, 2, 0]])
    np.testing.assert_array_equal(labels, [[0, 0, *answer, 2, 0, 0]])


def test_gpt2s_tokenizer_starts_and_ends_with_one_token():
    tokenizer = gpt2_tokenizer()
    assert special_token_ids(tokenizer) == (8, 8, 0)
    packed = pack_captions(tokenizer, ["a red", "a"], 4).numpy()
    np.testing.assert_array_equal(packed, [[8, 0, 7, 8, 0], [8, 0, 8, 0, 0]])
    assert detokenize_captions(tokenizer, packed) == ["a red", "a"]


def test_a_tokenizer_that_does_not_pad_with_zero_is_refused():
    tokenizer = gemma_tokenizer(pad_id=3, unk_id=0)
    with pytest.raises(ValueError, match="GemmaTokenizer pads with id 3 and ends with id 2"):
        pack_captions(tokenizer, ["a red circle"], 6)
