"""read_jsonl: records with their line numbers, and errors that name the file and the line."""

import io

import pytest

from vlm.data.jsonl import read_jsonl

FIELDS = {"image_id": None, "caption": "string", "captions": "strings"}


def test_records_come_with_their_line_numbers_blank_lines_skipped(tmp_path):
    path = tmp_path / "rows.jsonl"
    # A BOM, CRLF endings, a blank line, and a caption holding U+2028 (a line
    # separator to str.splitlines, plain text to JSON).
    path.write_bytes(
        '\ufeff{"image_id": 1, "caption": "a\u2028b"}\r\n\r\n  \n{"image_id": "x"}\n'.encode()
    )
    assert list(read_jsonl(path)) == [
        (1, {"image_id": 1, "caption": "a\u2028b"}),
        (4, {"image_id": "x"}),
    ]
    assert list(read_jsonl(str(path), fields={"image_id": None}))[1] == (4, {"image_id": "x"})


@pytest.mark.parametrize("lines, message", [
    (['{"image_id": 1, "caption": "a", "captions": ["b"]}', "", '{"image_id": 2,'],
     "rows.jsonl, line 3: bad JSON "
     "(Expecting property name enclosed in double quotes at column 16)"),
    (['[1, "a"]'], 'rows.jsonl, line 1: expected a JSON object. Received: [1, "a"]'),
    (['{"image_id": 1, "captions": ["b"]}'],
     "rows.jsonl, line 1: expected keys 'image_id' and 'caption' and 'captions'; "
     "missing 'caption'. "
     'Received: {"image_id": 1, "captions": ["b"]}'),
    (['{"image_id": 1, "caption": 5, "captions": ["b"]}'],
     "rows.jsonl, line 1: 'caption' must be a string. Received: 5"),
    (['{"image_id": 1, "caption": "a", "captions": []}'],
     "rows.jsonl, line 1: 'captions' must be a non-empty list of strings. Received: []"),
    (['{"image_id": 1, "caption": "a", "captions": ["b", 3]}'],
     "rows.jsonl, line 1: 'captions' must be a non-empty list of strings. Received: ['b', 3]"),
])
def test_errors_name_the_file_the_line_and_the_fault(tmp_path, lines, message):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as error:
        list(read_jsonl(path, fields=FIELDS))
    assert str(error.value) == f"{tmp_path}/{message}"


def test_records_before_a_bad_line_are_yielded_first(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\nnope\n')
    records = read_jsonl(path)
    assert next(records) == (1, {"a": 1})
    with pytest.raises(
        ValueError, match=r"rows\.jsonl, line 2: bad JSON \(Expecting value at column 1\)"
    ):
        next(records)


def test_not_utf8_and_missing_files(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(
        ValueError, match=r"rows\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at offset 22\)"
    ):
        list(read_jsonl(path))
    with pytest.raises(ValueError, match=r"nope\.jsonl: file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_lines_from_an_open_file_or_a_list_with_a_given_name():
    file = io.StringIO('{"a": 1}\n{"a": 2}\n')
    file.name = "in-memory.jsonl"
    assert [line for line, _ in read_jsonl(file)] == [1, 2]
    with pytest.raises(ValueError, match=r"^captions\.jsonl, line 2: expected a JSON object"):
        list(read_jsonl(['{"a": 1}', "3"], name="captions.jsonl"))
