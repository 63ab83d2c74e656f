"""JSON Lines reading whose errors name the file and the line (plain Python, no TensorFlow).

One reader serves the captions files of a folder source and the
predictions/references files of `evaluate.py`.
"""

import io
import json
import os

# What a field of kind "string" or "strings" must hold, and its check.
_KINDS = {
    "string": ("a string", lambda value: isinstance(value, str)),
    "strings": (
        "a non-empty list of strings",
        lambda value: (
            isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
        ),
    ),
}


def line_error(name, line, message):
    """The `ValueError` for a bad line: `"{name}, line {line}: {message}"`."""
    return ValueError(f"{name}, line {line}: {message}")


def check_field(name, line, key, value, kind):
    """Raises a `line_error` unless `value` (the record's `key`) is of `kind`.

    Args:
        name: str. The file, as errors name it.
        line: int. The 1-based line number.
        key: str. The field's key.
        value: the field's value.
        kind: "string" or "strings" (a non-empty list of strings).
    """
    expected, ok = _KINDS[kind]
    if not ok(value):
        raise line_error(name, line, f"{key!r} must be {expected}. Received: {value!r}")


def read_text(path):
    """The text of a UTF-8 file (a leading BOM dropped); not UTF-8 is an error naming the line.

    Args:
        path: str or `pathlib.Path`.

    Returns:
        The decoded text.
    """
    with open(path, "rb") as file:
        raw = file.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise line_error(
            path, line, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                        "save the file as UTF-8") from None


def read_jsonl(source, *, name=None, fields=None):
    """Yields `(line_number, record)` for each non-blank line of a JSON Lines file.

    Every error is a `ValueError` that starts `"{name}, line {n}: "` and says
    what is wrong: the file is not UTF-8, a line is bad JSON, a record is not
    a JSON object, or a key of `fields` is missing or holds the wrong type.

    Args:
        source: path of the file (str or `pathlib.Path`), or its lines (any
            iterable of str, such as an open text file).
        name: how errors name the file. Defaults to the path, or to the
            open file's `name`.
        fields: dict or None. Keys every record must have, each mapped to
            the kind of its value: "string", "strings" (a non-empty list of
            strings) or None (any JSON value).

    Yields:
        `(line_number, record)`: the 1-based line and the record, a dict.

    Example:

    >>> for line, record in read_jsonl(
    ...     "preds.jsonl", fields={"image_id": None, "caption": "string"}
    ... ):
    ...     print(line, record["caption"])
    """
    if isinstance(source, (str, os.PathLike)):
        name = source if name is None else name
        if not os.path.isfile(source):
            raise ValueError(f"{name}: file not found")
        # Not str.splitlines: a JSON string may hold U+2028 and other line separators.
        lines = io.StringIO(read_text(source), newline="")
    else:
        name = getattr(source, "name", "<jsonl>") if name is None else name
        lines = source
    fields = fields or {}
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text.rstrip("\r\n"))  # columns counted on this line
        except json.JSONDecodeError as error:
            raise line_error(
                name, line, f"bad JSON ({error.msg} at column {error.colno})"
            ) from None
        if not isinstance(record, dict):
            raise line_error(name, line, f"expected a JSON object. Received: {text.strip()[:120]}")
        missing = [key for key in fields if key not in record]
        if missing:
            expected = " and ".join(repr(key) for key in fields)
            raise line_error(
                name, line, f"expected keys {expected}; missing {', '.join(map(repr, missing))}. "
                            f"Received: {text.strip()[:120]}")
        for key, kind in fields.items():
            if kind is not None:
                check_field(name, line, key, record[key], kind)
        yield line, record
