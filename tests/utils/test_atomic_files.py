"""Writes a kill leaves whole (vlm/utils/atomic_files.py)."""

import json
import os

import pytest

from vlm.utils.atomic_files import atomic_write
from vlm.utils.atomic_files import write_json_atomically


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "report.json"
    atomic_write(str(path), lambda p: open(p, "w").write('{"epoch": 1}'))

    def dies_halfway(temporary):
        with open(temporary, "w") as f:
            f.write('{"epo')
        raise KeyboardInterrupt  # any exception: a kill mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), dies_halfway)
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["report.json"]  # the temporary is cleaned up

    # A SIGKILL leaves the temporary behind: the next write replaces it.
    (tmp_path / ".tmp-report.json").write_text("garbage")
    atomic_write(str(path), lambda p: open(p, "w").write('{"epoch": 2}'))
    assert json.loads(path.read_text()) == {"epoch": 2}
    assert os.listdir(tmp_path) == ["report.json"]


def test_write_json_atomically_writes_indented_json_with_a_final_newline(tmp_path):
    path = tmp_path / "sub" / "history.json"
    write_json_atomically(str(path), {"loss": [0.5, 0.25]})
    assert path.read_text() == '{\n  "loss": [\n    0.5,\n    0.25\n  ]\n}\n'
    assert os.listdir(path.parent) == ["history.json"]
