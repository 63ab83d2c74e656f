"""Caption normalisation, a WordPiece caption tokenizer, and packing to fixed-length ids.

Captions go through one normalisation everywhere (vocabulary learning, training
targets, evaluation references): lowercase, apostrophes deleted ("man's" ->
"mans"), every other punctuation mark, separator or control character replaced
by a space, whitespace collapsed and stripped. `normalize_caption` (Python) and
`tf_normalize_caption` (TensorFlow graph ops) implement it twice and agree.

The tokenizer is a `keras_hub.tokenizers.WordPieceTokenizer` subclass that
applies the normalisation itself, so calling it on raw text gives the same ids
as the training pipeline. Its vocabulary starts with the four special tokens:

    id 0 [PAD]   id 1 [UNK]   id 2 [START]   id 3 [END]

Packing and detokenizing also take a pretrained language model's keras-hub
tokenizer (GPT-2's, Gemma's, Llama's): they read its `start_token_id`,
`end_token_id` and `pad_token_id`, and need padding to be id 0.
"""

import weakref

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from vlm.utils.argument_checks import check_positive_int
from vlm.utils.caption_text import normalize_caption  # noqa: F401  (part of this module's API)

PAD = "[PAD]"
UNK = "[UNK]"
START = "[START]"
END = "[END]"
# Reserved at the head of every vocabulary, in this order: [PAD] is id 0, so
# zero-padded label arrays need no remapping.
SPECIAL_TOKENS = (PAD, UNK, START, END)
# Marks where an image sits in the text of a model that reads several
# (`vlm.models.MultiImageCaptioner`); reserved after the four above.
IMAGE = "<image>"

# Deleted rather than turned into spaces, so "man's" stays one word.
# RE2 versions of the same character classes. `[!-/:-@\[-`{-~]` is exactly
# `string.punctuation`; `\p{P}` is Unicode punctuation, `\p{Z}` Unicode
# separators (spaces), `\p{Cc}` control characters (tab, newline, ...).
_TF_APOSTROPHES = "['`\u2018\u2019]"
_TF_TO_SPACE = r"[!-/:-@\[-`{-~]|\p{P}|\p{Z}|\p{Cc}"


def tf_normalize_caption(text):
    """Normalises captions with TensorFlow ops (graph safe, any shape).

    The graph version of `normalize_caption`; use it inside tf.data.

    Args:
        text: string `tf.Tensor` or `tf.RaggedTensor` of any shape, or
            anything `tf.convert_to_tensor` makes a string tensor of.

    Returns:
        A string tensor of the same shape with every element normalised.

    Example:

    >>> tf_normalize_caption(tf.constant(["Two  cats.", "A dog's toy"]))
    <tf.Tensor: shape=(2,), dtype=string, numpy=array([b'two cats', b'a dogs toy'], dtype=object)>
    """
    if not isinstance(text, tf.RaggedTensor):
        text = tf.convert_to_tensor(text)
    if text.dtype != tf.string:
        raise TypeError(f"`text` must be a string tensor. Received: dtype={text.dtype}")
    # Control characters first: `tf.strings.lower(encoding="utf-8")` stops
    # at a NUL byte ("a\0dog" -> "a"), and they become spaces anyway.
    text = tf.strings.regex_replace(text, r"\p{Cc}", " ")
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, _TF_APOSTROPHES, "")
    text = tf.strings.regex_replace(text, _TF_TO_SPACE, " ")
    text = tf.strings.regex_replace(text, " +", " ")
    return tf.strings.strip(text)


def _normalize_any(inputs):
    """Normalises strings in whatever container a tokenizer may be called on."""
    if isinstance(inputs, (tf.Tensor, tf.RaggedTensor)):
        return tf_normalize_caption(inputs)
    if isinstance(inputs, (str, bytes)):
        return normalize_caption(inputs)
    if isinstance(inputs, np.ndarray):
        return tf_normalize_caption(tf.constant(inputs))
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_normalize_any(x) for x in inputs)
    return inputs


@keras.saving.register_keras_serializable(package="vlm")
class CaptionTokenizer(keras_hub.tokenizers.WordPieceTokenizer):
    """A WordPiece tokenizer that normalises captions before tokenizing them.

    A `keras_hub.tokenizers.WordPieceTokenizer` whose `tokenize` (and so
    `__call__`) first applies `normalize_caption` / `tf_normalize_caption`,
    and whose vocabulary must start with `[PAD]` and contain `[UNK]`,
    `[START]` and `[END]`. Words made of characters outside the vocabulary
    (most emoji, unseen scripts) become `[UNK]`. Special tokens written into
    the text are not recognised: their brackets are punctuation.

    Like every keras-hub tokenizer it runs its TensorFlow path inside
    `tf.function` / `tf.data` and a pure-Python path when called eagerly:
    eager calls return a NumPy array for one string and a list of lists for
    a batch; `detokenize` returns a Python `str` (or list of `str`) when eager
    and a string `tf.Tensor` in a graph, on every Keras backend. The
    vocabulary is not part of `get_config()`: it is saved as an asset in
    `.keras` files.

    Args:
        vocabulary: list of WordPiece tokens, or a path to a file with one
            token per line. Usually from `train_tokenizer`.
        sequence_length: int. If set, `tokenize` pads/truncates to this
            length. Leave it None with `pack_captions`.
        lowercase: bool. Also case-fold inside the WordPiece step (the
            normalisation already lowercases).
        **kwargs: other `WordPieceTokenizer` arguments (`oov_token`,
            `suffix_indicator`, `name`, ...).

    Attributes:
        pad_token_id, unk_token_id, start_token_id, end_token_id: ints.

    Example:

    >>> tokenizer = CaptionTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[START]", "[END]", "a", "dog", "run", "##s"])
    >>> tokenizer("A DOG runs!")
    array([4, 5, 6, 7], dtype=int32)
    >>> tokenizer.detokenize([4, 5, 6, 7])
    'a dog runs'
    """

    def __init__(self, vocabulary=None, sequence_length=None, lowercase=True, **kwargs):
        # Registered before the vocabulary is set, which fills in the `*_id`s.
        self._add_special_token(PAD, "pad_token")
        self._add_special_token(UNK, "unk_token")
        self._add_special_token(START, "start_token")
        self._add_special_token(END, "end_token")
        kwargs.setdefault("oov_token", UNK)
        super().__init__(
            vocabulary=vocabulary,
            sequence_length=sequence_length,
            lowercase=lowercase,
            **kwargs,
        )

    def set_vocabulary(self, vocabulary):
        super().set_vocabulary(vocabulary)
        if self.vocabulary is not None and self.vocabulary[0] != PAD:
            raise ValueError(
                f"The vocabulary must start with {PAD!r} so that padding is id 0. "
                f"Received: vocabulary[:5]={self.vocabulary[:5]}"
            )

    def tokenize(self, inputs):
        return super().tokenize(_normalize_any(inputs))


def _caption_dataset(captions):
    """Returns a tf.data.Dataset of scalar strings from a list or dataset."""
    if isinstance(captions, tf.data.Dataset):
        spec = captions.element_spec
        if (
            not isinstance(spec, tf.TensorSpec)
            or spec.dtype != tf.string
            or spec.shape.rank not in (0, 1)
        ):
            raise ValueError(
                "`captions` must be a dataset of string scalars or string "
                f"vectors. Received: element_spec={spec}"
            )
        return captions.unbatch() if spec.shape.rank == 1 else captions
    if isinstance(captions, (str, bytes)) or not isinstance(captions, (list, tuple, np.ndarray)):
        raise TypeError(
            "`captions` must be a list of strings or a tf.data.Dataset of "
            f"strings. Received: {type(captions).__name__}"
        )
    captions = list(captions)
    if not captions:
        raise ValueError("`captions` is empty: nothing to learn a vocabulary from.")
    for index, caption in enumerate(captions):
        if not isinstance(caption, (str, bytes)):
            raise TypeError(
                f"`captions` must contain strings. Received: captions[{index}]="
                f"{caption!r} ({type(caption).__name__})"
            )
    return tf.data.Dataset.from_tensor_slices(tf.constant(captions, tf.string))


def train_tokenizer(captions, vocabulary_size, *, sequence_length=None, name="caption_tokenizer",
                    extra_special_tokens=()):
    """Learns a WordPiece vocabulary from training captions.

    Captions are normalised with `tf_normalize_caption`, then
    `keras_hub.tokenizers.compute_word_piece_vocabulary` learns the word
    pieces with `[PAD] [UNK] [START] [END]` reserved as ids 0..3. Every
    character seen in training gets a token (alone and as a `##` suffix), so
    only unseen characters map to `[UNK]`. The learner keeps whole words seen
    about 10 times or more and spells rarer ones with pieces; on a small corpus
    the vocabulary can therefore be smaller than `vocabulary_size`, which is
    an upper bound.

    Args:
        captions: list of `str`, or a `tf.data.Dataset` of string scalars or
            string vectors (such as `examples.map(lambda e: e["captions"])`).
        vocabulary_size: int. Maximum vocabulary size, special tokens included.
        sequence_length: int. Passed on to the tokenizer (usually None).
        name: str. Layer name; fixed so that the vocabulary's asset path in a
            `.keras` file does not depend on how many tokenizers were made.
        extra_special_tokens: tokens reserved after the four, as ids 4...,
            such as `IMAGE`.

    Returns:
        A `CaptionTokenizer`.

    Example:

    >>> tokenizer = train_tokenizer(["A dog runs.", "A cat sleeps."] * 10, 100)
    >>> tokenizer.get_vocabulary()[:6]
    ['[PAD]', '[UNK]', '[START]', '[END]', 'a', 'c']
    """
    reserved = list(SPECIAL_TOKENS) + list(extra_special_tokens)
    check_positive_int("vocabulary_size", vocabulary_size, minimum=len(reserved) + 1)
    data = _caption_dataset(captions)
    data = data.map(tf_normalize_caption, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    try:
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            data,
            vocabulary_size,
            lowercase=True,
            strip_accents=False,
            split=True,
            split_on_cjk=True,
            reserved_tokens=reserved,
        )
    except StopIteration:
        # The learner takes `next(iter(word_counts))` on an empty counter.
        raise ValueError(
            "`captions` contain no words after normalisation: nothing to learn "
            "a vocabulary from."
        ) from None
    return CaptionTokenizer(vocabulary=vocabulary, sequence_length=sequence_length, name=name)


def special_token_ids(tokenizer):
    """`(start, end, pad)` ids of a `CaptionTokenizer` or a keras-hub tokenizer.

    Labels are padded with id 0 and the losses skip `pad_token_id`, so a
    tokenizer must pad with id 0 and end on an id of its own.

    Raises:
        ValueError: the tokenizer lacks one of the three, pads with another
            id than 0, or ends with its padding id.
    """
    names = ("start_token_id", "end_token_id", "pad_token_id")
    ids = tuple(getattr(tokenizer, name, None) for name in names)
    missing = [name for name, i in zip(names, ids) if i is None]
    if missing:
        raise ValueError(
            f"{type(tokenizer).__name__} has no {', '.join(missing)}: vlm packs text as "
            "`start ... end pad...` and needs all three (CaptionTokenizer and keras-hub's "
            "GPT-2, Gemma and Llama tokenizers have them).")
    start_id, end_id, pad_id = (int(i) for i in ids)
    if pad_id != 0 or end_id == pad_id:
        raise ValueError(
            f"{type(tokenizer).__name__} pads with id {pad_id} and ends with id {end_id}: "
            "vlm needs padding to be id 0 and an end token of its own (its labels are "
            "zero-padded and the loss skips padding).")
    return start_id, end_id, pad_id


def _pack_graph(tokenizer, captions, sequence_length, ids):
    start_id, end_id, pad_id = ids
    captions = tf.convert_to_tensor(captions, tf.string)
    if captions.shape.rank is None or captions.shape.rank > 1:
        raise ValueError(
            f"`captions` must be a string scalar or vector. Received: shape={captions.shape}"
        )
    scalar = captions.shape.rank == 0
    if scalar:
        captions = captions[tf.newaxis]
    tokens = tokenizer.tokenize(captions)
    if not isinstance(tokens, tf.RaggedTensor):
        # A tokenizer with its own `sequence_length` pads with 0: undo that.
        tokens = tf.RaggedTensor.from_tensor(tokens, padding=0)
    tokens = tf.cast(tokens, tf.int32)
    # [START] + at most sequence_length - 1 word pieces + [END].
    tokens = tokens[:, : sequence_length - 1]
    batch = tf.shape(captions)[0]
    start = tf.fill([batch, 1], tf.constant(start_id, tf.int32))
    end = tf.fill([batch, 1], tf.constant(end_id, tf.int32))
    packed = tf.concat([start, tokens, end], axis=1)
    packed = packed.to_tensor(default_value=pad_id, shape=[None, sequence_length + 1])
    return packed[0] if scalar else packed  # (batch, sequence_length + 1)


def pack_captions(tokenizer, captions, sequence_length):
    """Tokenizes captions into fixed-length `[START] ... [END] [PAD]...` id rows.

    Each row holds `sequence_length + 1` int32 ids, so that `row[:-1]` (decoder
    input) and `row[1:]` (labels) are both `sequence_length` long. Truncation:
    a caption with more than `sequence_length - 1` word pieces keeps its first
    `sequence_length - 1` pieces and still ends in `[END]` (in the last
    position), as `keras_hub.layers.StartEndPacker` does, so every row has
    exactly one `[START]` and one `[END]`.

    Runs TensorFlow ops: it works inside tf.data / `tf.function`, and when
    called eagerly it runs the same TensorFlow path through a `tf.function`
    traced once per tokenizer and `sequence_length` (a `tf.Tensor` comes back
    on every backend).

    Args:
        tokenizer: a `CaptionTokenizer`, or a keras-hub tokenizer padding
            with id 0 (`special_token_ids`).
        captions: string scalar or vector (`str`, list, `tf.Tensor`).
        sequence_length: int >= 1. Model sequence length T.

    Returns:
        int32 `tf.Tensor` of shape `(sequence_length + 1,)` for one caption or
        `(num_captions, sequence_length + 1)`.

    Example (with the tokenizer of the `CaptionTokenizer` example):

    >>> pack_captions(tokenizer, ["A dog."], sequence_length=4).numpy()
    array([[2, 4, 5, 3, 0]], dtype=int32)
    """
    check_positive_int("sequence_length", sequence_length)
    ids = special_token_ids(tokenizer)
    if not tf.executing_eagerly():
        return _pack_graph(tokenizer, captions, sequence_length, ids)
    captions = tf.convert_to_tensor(captions, tf.string)
    if captions.shape.rank == 0:
        return _eager_packer(tokenizer, sequence_length, ids)(captions[tf.newaxis])[0]
    return _eager_packer(tokenizer, sequence_length, ids)(captions)


# tokenizer -> {(sequence_length, ids): traced packer}. Weak keys, and packers
# hold the tokenizer weakly, so a dropped tokenizer is freed with its packers.
_EAGER_PACKERS = weakref.WeakKeyDictionary()


def _eager_packer(tokenizer, sequence_length, ids):
    """Returns a `tf.function` packing string vectors, traced once per tokenizer and length."""
    packers = _EAGER_PACKERS.setdefault(tokenizer, {})
    key = (sequence_length, ids)
    if key not in packers:
        tokenizer_ref = weakref.ref(tokenizer)
        packers[key] = tf.function(
            lambda captions: _pack_graph(tokenizer_ref(), captions, sequence_length, ids),
            input_signature=[tf.TensorSpec([None], tf.string)],
            autograph=False,
        )
    return packers[key]


def prefixed_captions(tokenizer, captions, sequence_length, prefix_ids):
    """Teacher-forcing `(tokens, labels)` with fixed ids (such as `<image>`) before [START].

    `packed = prefix + pack_captions(...)` with the caption packed to
    `sequence_length - len(prefix)`; `tokens = packed[:, :-1]` and `labels =
    packed[:, 1:]` with the labels of the prefix positions set to padding,
    so no loss falls on them. TensorFlow ops (graph safe, for `tf.data`).

    Returns:
        int32 `(tokens, labels)`, `(batch, sequence_length)` each.
    """
    n = len(prefix_ids)
    packed = pack_captions(tokenizer, captions, sequence_length - n)
    prefix = tf.tile(tf.constant([list(prefix_ids)], tf.int32), [tf.shape(packed)[0], 1])
    packed = tf.concat([prefix, tf.cast(packed, tf.int32)], axis=1)
    labels = packed[:, 1:]
    labels = tf.concat([tf.zeros_like(labels[:, :n]), labels[:, n:]], axis=1)
    return packed[:, :-1], labels


def prompted_captions(tokenizer, prompts, captions, sequence_length, loss_on_prompt=False):
    """Teacher-forcing `(tokens, labels)` of `prompt [START] caption [END]` rows.

    Each row's prompt (a question, say) is tokenized without special tokens
    and put before the packed caption (the answer); the row is cut to
    `sequence_length + 1` ids (the answer's end first). No loss falls on the
    prompt or on predicting [START], unless `loss_on_prompt` (training a
    language model on the whole text), for every row or the rows it marks.
    TensorFlow ops (graph safe, for `tf.data`).

    Args:
        tokenizer: a `CaptionTokenizer`.
        prompts: string vector, one per caption ("" for none).
        captions: string vector.
        sequence_length: int, the model's sequence length T.
        loss_on_prompt: bool, or a bool vector with one value per row.

    Returns:
        int32 `(tokens, labels)`, `(batch, sequence_length)` each.
    """
    check_positive_int("sequence_length", sequence_length)
    if tf.executing_eagerly():  # the TensorFlow path on every backend, as `pack_captions`
        return tf.function(lambda p, c, learn: prompted_captions(
            tokenizer, p, c, sequence_length, learn), autograph=False)(
                tf.convert_to_tensor(prompts, tf.string), tf.convert_to_tensor(captions, tf.string),
                tf.convert_to_tensor(loss_on_prompt, tf.bool))
    start_id, end_id, pad_id = special_token_ids(tokenizer)
    prompt_ids = tokenizer.tokenize(tf.convert_to_tensor(prompts, tf.string))
    answer_ids = tokenizer.tokenize(tf.convert_to_tensor(captions, tf.string))
    if not isinstance(prompt_ids, tf.RaggedTensor):
        prompt_ids = tf.RaggedTensor.from_tensor(prompt_ids, padding=0)
        answer_ids = tf.RaggedTensor.from_tensor(answer_ids, padding=0)
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    answer_ids = tf.cast(answer_ids, tf.int32)[:, : sequence_length - 1]
    batch = tf.shape(answer_ids)[0]
    start = tf.fill([batch, 1], start_id)
    end = tf.fill([batch, 1], end_id)
    packed = tf.concat([prompt_ids, start, answer_ids, end], axis=1)
    # Which ids are targets: the answer and its [END] (or everything but [START]).
    learn = tf.broadcast_to(tf.cast(loss_on_prompt, tf.int32), [batch])
    prompt_weight = prompt_ids.with_flat_values(tf.repeat(learn, prompt_ids.row_lengths()))
    weight = tf.concat([prompt_weight, tf.zeros_like(start),
                        tf.ones_like(answer_ids), tf.ones_like(end)], axis=1)
    # Too long: keep the row's last sequence_length + 1 ids (the prompt's end).
    keep = sequence_length + 1
    length = packed.row_lengths()
    cut = tf.maximum(length - keep, 0)
    packed = tf.RaggedTensor.from_row_lengths(
        _drop_row_heads(packed, cut), length - cut)
    weight = tf.RaggedTensor.from_row_lengths(_drop_row_heads(weight, cut), length - cut)
    packed = packed.to_tensor(default_value=pad_id, shape=[None, keep])
    weight = weight.to_tensor(default_value=0, shape=[None, keep])
    labels = tf.where(weight[:, 1:] > 0, packed[:, 1:], tf.zeros_like(packed[:, 1:]))
    return packed[:, :-1], labels


def _drop_row_heads(ragged, cut):
    """The values of `ragged` without the first `cut[i]` of each row i."""
    rows = ragged.value_rowids()
    position = tf.range(tf.shape(ragged.values, out_type=tf.int64)[0]) - tf.gather(
        ragged.row_starts(), rows)
    return tf.boolean_mask(ragged.values, position >= tf.gather(cut, rows))


def detokenize_captions(tokenizer, token_ids):
    """Turns rows of token ids back into caption strings (eager only).

    Each row is cut at its first `[END]`; `[START]` and `[PAD]` are dropped;
    the tokenizer joins the rest (word pieces: `"run", "##s"` -> `"runs"`).

    Args:
        tokenizer: the tokenizer that produced the ids.
        token_ids: `(batch, length)` or `(length,)` ints: NumPy, a list, or a
            tensor of any backend (or TensorFlow).

    Returns:
        A list of `str` for a batch, or one `str` for a single row.

    Example (with the tokenizer of the `CaptionTokenizer` example):

    >>> detokenize_captions(tokenizer, [[2, 4, 5, 6, 7, 3, 0]])
    ['a dog runs']
    """
    if isinstance(token_ids, (tf.Tensor, tf.RaggedTensor)):
        token_ids = token_ids.numpy() if isinstance(token_ids, tf.Tensor) else token_ids.to_list()
    elif not isinstance(token_ids, (list, tuple, np.ndarray)):
        token_ids = keras.ops.convert_to_numpy(token_ids)
    rows = token_ids if isinstance(token_ids, list) else np.asarray(token_ids).tolist()
    single = not rows or not isinstance(rows[0], (list, tuple))
    if single:
        rows = [rows]
    start_id, end_id, pad_id = special_token_ids(tokenizer)
    # Dropped wherever they are: the start and padding ids that are special
    # tokens. GPT-2's padding id 0 is "!", a word: only trailing ids 0 go.
    dropped = {start_id, pad_id} & set(getattr(tokenizer, "special_token_ids", [start_id]))
    cleaned = []
    for row in rows:
        row = [int(i) for i in row]
        if row and row[0] == start_id:  # GPT-2's start is its end token
            row = row[1:]
        if end_id in row:
            row = row[: row.index(end_id)]
        else:
            while row and row[-1] == pad_id:
                row.pop()
        cleaned.append([i for i in row if i not in dropped])
    nonempty = [row for row in cleaned if row]
    decoded = iter(tokenizer.detokenize(nonempty) if nonempty else [])
    texts = [next(decoded) if row else "" for row in cleaned]
    return texts[0] if single else texts


class ServingText(tf.Module):
    """A `CaptionTokenizer`'s prompt lookup and detokenization in core TensorFlow ops.

    What a SavedModel serves text with: no Keras and no tensorflow_text op in
    its graph. A prompt is normalised as captions are and split on spaces; a
    word outside the vocabulary is [UNK] (the Keras tokenizer would split it
    into pieces). Detokenizing cuts each row at [END], drops the special
    tokens and joins `##` word pieces.

    Args:
        tokenizer: a `vlm.data.tokenizer.CaptionTokenizer`.

    Raises:
        ValueError: another kind of tokenizer (a SentencePiece model needs
            tensorflow_text's ops).
    """

    def __init__(self, tokenizer):
        super().__init__(name="serving_text")
        if not isinstance(tokenizer, CaptionTokenizer):
            raise ValueError(
                "The SavedModel serves vlm's own CaptionTokenizer with plain TensorFlow ops; "
                f"this model's tokenizer is a {type(tokenizer).__name__}. Serve it from "
                "Keras (`model.generate`) instead.")
        vocabulary = tokenizer.get_vocabulary()
        self._vocabulary = tf.constant(vocabulary)
        self._special = tf.constant([tokenizer.pad_token_id, tokenizer.start_token_id,
                                     tokenizer.end_token_id], tf.int32)
        self._end = tokenizer.end_token_id
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(vocabulary),
                                                tf.range(len(vocabulary), dtype=tf.int32)),
            default_value=tokenizer.token_to_id("[UNK]"))

    def prompt_ids(self, prompt):
        """int32 `(words,)` ids of one prompt string."""
        return self._table.lookup(tf.strings.split(tf_normalize_caption(prompt)))

    def detokenize(self, ids):
        """Strings `(batch,)` from int `(batch, length)` ids."""
        ended = tf.cumsum(tf.cast(tf.equal(ids, self._end), tf.int32), axis=1) > 0
        special = tf.reduce_any(tf.equal(ids[..., None], self._special), axis=-1)
        words = tf.ragged.boolean_mask(tf.gather(self._vocabulary, ids), ~(ended | special))
        joined = tf.strings.reduce_join(words, axis=1, separator=" ")
        return tf.strings.regex_replace(joined, " ##", "")
