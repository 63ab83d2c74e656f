"""Caption text normalisation in pure Python (no TensorFlow), shared by data and metrics.

COCO style: lowercase, apostrophes deleted ("man's" -> "mans"), every other
punctuation mark (ASCII and Unicode), separator or control character replaced
by a space, whitespace collapsed and stripped.
"""

import string
import unicodedata

# Deleted rather than turned into spaces, so "man's" stays one word.
APOSTROPHES = "'`\u2018\u2019"
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _becomes_space(char):
    if char in _ASCII_PUNCTUATION:
        return True
    category = unicodedata.category(char)
    return category[0] in "PZ" or category == "Cc"


def normalize_caption(text):
    """Normalises one caption the COCO way, in pure Python.

    Lowercases, deletes apostrophes, replaces punctuation (ASCII and Unicode),
    separators and control characters by spaces, then collapses runs of spaces
    and strips the ends. Other characters (letters, digits, accents, emoji) are
    kept. Gives the same result as `tf_normalize_caption` on ASCII text.

    Args:
        text: `str`, or UTF-8 `bytes` (as tf.data yields them).

    Returns:
        The normalised `str`, possibly empty.

    Example:

    >>> normalize_caption("  A man's DOG, jumping!\\n")
    'a mans dog jumping'
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(
            f"`text` must be a str or bytes. Received: {type(text).__name__} {text!r}"
        )
    chars = []
    for char in text.lower():
        if char in APOSTROPHES:
            continue
        chars.append(" " if _becomes_space(char) else char)
    # Every whitespace character of `str.split` is a separator or a control
    # character, so only spaces remain to split on here.
    return " ".join(word for word in "".join(chars).split(" ") if word)


def caption_words(text):
    """The normalised words of a caption: `normalize_caption(text).split()`."""
    return normalize_caption(text).split()
