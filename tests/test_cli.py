"""`python -m vlm caption`: files in every accepted format, and bad ones named."""

import io
import os

import numpy as np
import PIL.Image
import pytest

from tests.generation.test_generator import MODEL, golden_images
from vlm import cli


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    image = golden_images(1)[0]
    files = {}
    for name, fmt, data in [
        ("scene.png", "PNG", image),
        ("scene.jpg", "JPEG", image),
        ("scene.bmp", "BMP", image),
        ("scene.gif", "GIF", image),
        ("gray.png", "PNG", image.mean(-1).astype("uint8")),
        ("rgba.png", "PNG", np.concatenate([image, np.full((64, 64, 1), 255, "uint8")], -1)),
    ]:
        path = folder / name
        PIL.Image.fromarray(data).save(path, format=fmt)
        files[name] = str(path)
    path = folder / "deep.png"  # 16 bits per channel
    PIL.Image.fromarray((image.mean(-1) * 257).astype("uint16")).save(path)
    files["deep.png"] = str(path)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    jpeg = io.BytesIO()
    PIL.Image.fromarray(image).save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:200])
    for name in ("empty.jpg", "notes.png", "truncated.jpg"):
        files[name] = str(folder / name)
    files["missing.png"] = str(folder / "missing.png")
    return files


GOOD = ["scene.png", "scene.jpg", "scene.bmp", "scene.gif", "gray.png", "rgba.png", "deep.png"]
BAD = {"empty.jpg": "empty file", "notes.png": "not a readable image",
       "truncated.jpg": "not a readable image", "missing.png": "no such file"}


def test_captions_good_files_and_names_bad_ones(image_files, capsys):
    paths = [image_files[n] for n in GOOD[:2] + list(BAD) + GOOD[2:]]
    code = cli.main(["caption", *paths, "--model", MODEL])
    out, err = capsys.readouterr()
    assert code == 1
    lines = dict(line.split("\t") for line in out.strip().splitlines())
    assert set(lines) == {image_files[n] for n in GOOD}
    png = lines[image_files["scene.png"]]
    assert png.split()[:1] and png == lines[image_files["scene.bmp"]]  # lossless formats agree
    for name, message in BAD.items():
        assert f"error: {image_files[name]}: {message}" in err


def test_all_good_files_exit_zero_with_beam_search(image_files, capsys):
    code = cli.main(["caption", image_files["scene.png"], "--model", MODEL,
                     "--strategy", "beam", "--beams", "3"])
    assert code == 0
    assert capsys.readouterr().out.startswith(image_files["scene.png"] + "\t")


def test_missing_model_is_named(image_files, capsys):
    assert cli.main(["caption", image_files["scene.png"], "--model", "nope.keras"]) == 2
    assert "model file not found: nope.keras" in capsys.readouterr().err


def test_attention_map_is_written(image_files, tmp_path, capsys):
    out = tmp_path / "attention.png"
    code = cli.main(["caption", image_files["scene.png"], "--model", MODEL,
                     "--attention-map", str(out), "--layer", "0"])
    assert code == 0 and out.exists()
    width, height = PIL.Image.open(out).size
    assert width > 400 and height > 200
