"""`python -m vlm caption`: files in every accepted format, and bad ones named."""

import io

import numpy as np
import PIL.Image
import pytest

from tests.data.image_files import png_bomb
from tests.data.image_files import truncated_jpeg
from tests.generation.test_generator import MODEL
from tests.generation.test_generator import golden_images
from vlm import cli
from vlm.datasets.shapes.vocabulary import CAPTION_PREFIXES


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
    (folder / "cut.jpg").write_bytes(truncated_jpeg(image))  # good header, cut pixels
    (folder / "bomb.png").write_bytes(png_bomb())  # 10000x6000 in 7 kB
    alpha = np.concatenate([image, np.full((64, 64, 1), 9, "uint8")], -1)
    PIL.Image.fromarray(alpha).save(folder / "alpha.webp", lossless=True)
    # 3840x5760 (22 megapixels): the gray picture blown up 60x90 times.
    gray = image.mean(-1).astype("uint8")
    PIL.Image.fromarray(np.kron(gray, np.ones((60, 90), "uint8"))).save(folder / "huge.png")
    for name in ("empty.jpg", "notes.png", "truncated.jpg", "cut.jpg", "bomb.png",
                 "alpha.webp", "huge.png"):
        files[name] = str(folder / name)
    files["missing.png"] = str(folder / "missing.png")
    return files


GOOD = ["scene.png", "scene.jpg", "scene.bmp", "scene.gif", "gray.png", "rgba.png", "deep.png",
        "alpha.webp", "huge.png"]
BAD = {
    "empty.jpg": "empty file",
    "notes.png": "not a readable image (not a JPEG, PNG, GIF, BMP or WebP file)",
    "truncated.jpg": "not a readable image (Invalid JPEG data, size 200",
    "cut.jpg": "not a readable image (jpeg::Uncompress failed. Invalid JPEG data",
    "bomb.png": "refused: the image is 10000x6000 (60.0 megapixels), over the limit of 50 "
                "megapixels (MAX_IMAGE_PIXELS): refused before decoding",
    "missing.png": "no such file",
}


def without_prefix(caption):
    for prefix in sorted(CAPTION_PREFIXES, key=len, reverse=True):
        if prefix and caption.startswith(prefix):
            return caption[len(prefix):]
    return caption


def test_captions_good_files_and_names_bad_ones(image_files, capsys):
    paths = [image_files[n] for n in GOOD[:2] + list(BAD) + GOOD[2:]]
    code = cli.main(["caption", *paths, "--model", MODEL])
    out, err = capsys.readouterr()
    assert code == 1
    lines = dict(line.split("\t") for line in out.strip().splitlines())
    assert set(lines) == {image_files[n] for n in GOOD}
    png = lines[image_files["scene.png"]]
    assert png.split()[:1] and png == lines[image_files["scene.bmp"]]  # lossless formats agree
    assert lines[image_files["alpha.webp"]] == png  # alpha dropped
    gray = lines[image_files["gray.png"]]
    assert lines[image_files["deep.png"]] == gray  # 16 bits scaled to 8 exactly
    # 22 megapixels, resized like training. A gray picture is far from the data, so the
    # caption's opening (the data's prefixes are drawn at random) is a near tie: compare
    # what follows it.
    assert without_prefix(lines[image_files["huge.png"]]) == without_prefix(gray)
    for name, message in BAD.items():
        assert f"error: {image_files[name]}: {message}" in err


def test_all_good_files_exit_zero_with_beam_search(image_files, capsys):
    code = cli.main(["caption", image_files["scene.png"], "--model", MODEL,
                     "--sampler", "beam", "--beams", "3"])
    assert code == 0
    assert capsys.readouterr().out.startswith(image_files["scene.png"] + "\t")


def test_a_sampler_flag_that_does_not_apply_is_named(image_files, capsys):
    code = cli.main(["caption", image_files["scene.png"], "--model", MODEL,
                     "--sampler", "beam", "--top-k", "3"])
    assert code == 2
    assert "error: --top-k does not apply to --sampler beam" in capsys.readouterr().err


def test_missing_model_is_named(image_files, capsys):
    assert cli.main(["caption", image_files["scene.png"], "--model", "nope.keras"]) == 2
    assert "model file not found: nope.keras" in capsys.readouterr().err


def test_untrusted_or_foreign_model_files_are_refused(image_files, tmp_path, capsys):
    import keras

    inputs = keras.Input((3,))
    lambda_file = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Lambda(lambda x: x + 1)(inputs)).save(lambda_file)
    assert cli.main(["caption", image_files["scene.png"], "--model", str(lambda_file)]) == 2
    err = capsys.readouterr().err
    assert f"error: Refused to load {lambda_file}: it carries Python bytecode" in err
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert cli.main(["export", "--model", str(h5), "--output", str(tmp_path / "out")]) == 2
    assert f"error: {h5}: only .keras files are loaded, not .h5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_attention_map_is_written(image_files, tmp_path, capsys):
    out = tmp_path / "attention.png"
    code = cli.main(["caption", image_files["scene.png"], "--model", MODEL,
                     "--attention-map", str(out), "--layer", "0"])
    assert code == 0 and out.exists()
    width, height = PIL.Image.open(out).size
    assert width > 400 and height > 200


def test_caption_together_gives_one_caption_for_the_pair(image_files, tmp_path, capsys):
    from tests.models.test_multi_image_captioner import model as multi_image_model

    model = multi_image_model(2, "sources")
    path = str(tmp_path / "pair.keras")
    model.save(path)
    pair = [image_files["scene.png"], image_files["gray.png"]]
    assert cli.main(["caption", "--together", *pair, "--model", path, "--max-length", "4"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    expected = model.generate([[np.asarray(PIL.Image.open(p).convert("RGB")) for p in pair]],
                              max_length=4)[0]
    assert line == f"{pair[0]} + {pair[1]}\t{expected}"
    # The same file twice is two images.
    same = [pair[0], pair[0]]
    assert cli.main(["caption", "--together", *same, "--model", path, "--max-length", "4"]) == 0
    image = np.asarray(PIL.Image.open(pair[0]).convert("RGB"))
    expected = model.generate([[image, image]], max_length=4)[0]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{pair[0]} + {pair[0]}\t{expected}"
    # Image counts the model does not read, and a pair to a model of one image:
    # exit code 2 and one line naming what the model takes.
    for argv, message in [
        ([pair[0]], f"error: {path} reads 2 images per example: give them with --together"),
        (["--together", pair[0]], f"error: {path} reads 2 images per example; --together got 1"),
        (["--together", *pair, pair[0]],
         f"error: {path} reads 2 images per example; --together got 3"),
        (["--together", *pair, "--model", MODEL],
         f"error: {MODEL} reads one image per caption; --together needs a model that reads "
         f"several, such as {cli.DEFAULT_PAIR_MODEL}"),
    ]:
        argv = argv if "--model" in argv else [*argv, "--model", path]
        assert cli.main(["caption", *argv]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [message]


def test_caption_prompt_continues_the_text_for_every_image(image_files, capsys):
    from vlm import load_captioner

    paths = [image_files["scene.png"], image_files["gray.png"]]
    assert cli.main(["caption", *paths, "--model", MODEL, "--prompt", "a", "--max-length",
                     "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    model = load_captioner(MODEL)
    images = [np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths]
    expected = model.generate(model.preprocessor(images), prompts="a", max_length=5)
    assert lines == [f"{p}\t{c}" for p, c in zip(paths, expected)]
