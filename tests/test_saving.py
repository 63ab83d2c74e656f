"""Model files are untrusted: `.keras` only, checked, safe mode on; no pickle in the sources."""

import ast
import io
import json
import os
import pathlib
import shutil
import zipfile

import keras
import numpy as np
import pytest

from tests.generation.test_generator import MODEL
from vlm import load_captioner
from vlm.saving import UnsafeModelError
from vlm.saving import check_keras_file
from vlm.saving import load_keras_file

REPO = pathlib.Path(__file__).resolve().parent.parent
SMALL_MODEL = REPO / "tests" / "layers" / "golden" / "cross_attention.keras"  # 37 kB


@pytest.fixture(scope="module")
def lambda_file(tmp_path_factory):
    """A `.keras` file whose model holds a Python lambda (bytecode in its config)."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path_factory.mktemp("untrusted") / "lambda.keras"
    model.save(path)
    return path


def rewrite(source, target, edit_config=None, extra_members=(), weights=None):
    """Copies a `.keras` archive with its config edited or members added."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if edit_config:
        config = json.loads(members["config.json"])
        edit_config(config)
        members["config.json"] = json.dumps(config).encode()
    if weights is not None:
        members["model.weights.h5"] = weights
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in [*members.items(), *extra_members]:
            archive.writestr(name, data)
    return target


def test_a_lambda_layer_is_refused_with_the_file_named(lambda_file):
    with pytest.raises(UnsafeModelError) as error:
        load_captioner(lambda_file)
    message = str(error.value)
    assert message.startswith(f"Refused to load {lambda_file}: it carries Python bytecode")
    assert "config.config.layers[1].config.function" in message and "Lambda" in message


def test_keras_safe_mode_refuses_it_too_and_its_error_is_wrapped(lambda_file, monkeypatch):
    """With the config check switched off, Keras' safe mode is the second line."""
    monkeypatch.setattr("vlm.saving.check_keras_file", lambda path: None)
    with pytest.raises(UnsafeModelError) as error:
        load_keras_file(lambda_file)
    message = str(error.value)
    assert message.startswith(f"Refused to load {lambda_file}: Keras safe mode found code")
    assert "Keras said: Requested the deserialization of a `Lambda` layer" in message
    assert "safe_mode" in str(error.value.__cause__)


def _function_from_os(config):
    config["config"]["layers"][-1]["config"]["activation"] = {
        "module": "os", "class_name": "function", "config": "system", "registered_name": None}


def _layer_from_subprocess(config):
    config["config"]["layers"][-1].update(module="subprocess", class_name="Popen")


def _function_from_main(config):
    config["config"]["layers"][-1]["config"]["initializer"] = {
        "module": "__main__", "class_name": "function", "config": "payload",
        "registered_name": "payload"}


@pytest.mark.parametrize("edit, named", [
    (_function_from_os, "os.system"),
    (_layer_from_subprocess, "subprocess.Popen"),
    (_function_from_main, "__main__.payload"),
])
def test_config_objects_from_outside_keras_keras_hub_and_vlm_are_refused(tmp_path, edit, named):
    path = rewrite(SMALL_MODEL, tmp_path / "crafted.keras", edit)
    with pytest.raises(UnsafeModelError) as error:
        load_captioner(path)
    message = str(error.value)
    assert message.startswith(f"Refused to load {path}: its config refers to {named} at config.")
    assert "outside keras, keras_hub, vlm" in message


def test_archive_members_that_escape_are_refused(tmp_path):
    path = rewrite(SMALL_MODEL, tmp_path / "escape.keras",
                   extra_members=[("assets/../../../outside.txt", b"x")])
    with pytest.raises(UnsafeModelError, match="'assets/../../../outside.txt' points outside"):
        check_keras_file(path)


def test_other_formats_and_paths_get_a_clear_error(tmp_path):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    saved_model = tmp_path / "serving"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    renamed = tmp_path / "renamed.keras"
    shutil.copy(h5, renamed)
    no_config = tmp_path / "bare.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("model.weights.h5", b"")
    cases = [
        (h5, f"{h5}: only .keras files are loaded, not .h5"),
        (saved_model, f"{saved_model} is a TensorFlow SavedModel folder, not a .keras file"),
        (tmp_path, f"{tmp_path} is a folder, not a .keras file"),
        (renamed, f"{renamed} is not a .keras file: it is not a zip archive"),
        (no_config, f"{no_config} is not a .keras file: it has no config.json"),
        (tmp_path / "nope.keras", f"model file not found: {tmp_path / 'nope.keras'}"),
        (SMALL_MODEL, f"{SMALL_MODEL} holds a Functional, not a vlm model (a Captioner, "
                      "MultiImageCaptioner or VisionLanguageModel)"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError) as error:
            load_captioner(path)
        assert str(error.value).startswith(message), str(error.value)


def test_keras_errors_name_the_file(tmp_path):
    path = rewrite(SMALL_MODEL, tmp_path / "corrupt.keras", weights=b"not an HDF5 file")
    with pytest.raises(ValueError, match=f"^Could not load {path}: ") as error:
        load_keras_file(path)
    assert not isinstance(error.value, UnsafeModelError)


def test_the_shipped_model_passes_the_checks():
    check_keras_file(MODEL)  # raises if anything in it were refused
    with zipfile.ZipFile(MODEL) as archive:
        assert sorted(archive.namelist()) == [
            "assets/preprocessor/tokenizer/vocabulary.txt", "config.json", "metadata.json",
            "model.weights.h5"]


# ---------------------------------------------------------------- no pickle anywhere

# Modules that (un)pickle or run marshalled code.
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                    "marshal"}


def unsafe_calls(source, filename="<source>"):
    """`(line, what)` for every pickle use or unsafe model load in Python source."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLING_MODULES:
                    found.append((node.lineno, f"imports {name}"))
        if not isinstance(node, ast.Call):
            continue
        function = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if keywords.get("allow_pickle") == "True":
            found.append((node.lineno, f"{function}(allow_pickle=True)"))
        if keywords.get("safe_mode") == "False":
            found.append((node.lineno, f"{function}(safe_mode=False)"))
        if function.endswith("enable_unsafe_deserialization"):
            found.append((node.lineno, function))
        if function.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append((node.lineno, "torch.load without weights_only=True"))
        # Weights-only loading (`load_weights`) reads arrays and runs no code.
        if function.split(".")[-1] == "load_model" and \
                not filename.endswith(os.path.join("vlm", "saving.py")) and \
                f"{os.sep}tests{os.sep}" not in filename:
            found.append((node.lineno, f"{function} outside vlm.saving"))
    return found


# Reading source files does not depend on the Keras backend.
SOURCES_ONLY = pytest.mark.skipif(keras.config.backend() != "tensorflow",
                                  reason="backend-independent: runs in the TensorFlow suite")


@SOURCES_ONLY
def test_the_scanner_finds_each_kind_of_unsafe_call():
    bad = (
        "import pickle\nfrom joblib import load\nimport numpy as np\n"
        "np.load('x.npy', allow_pickle=True)\nimport torch\ntorch.load('w.pt')\n"
        "torch.load('w.pt', weights_only=True)\n"
        "keras.saving.load_model('m.keras', safe_mode=False)\n"
        "keras.config.enable_unsafe_deserialization()\n"
    )
    assert unsafe_calls(bad, "vlm/x.py") == [
        (1, "imports pickle"), (2, "imports joblib"),
        (4, "np.load(allow_pickle=True)"), (6, "torch.load without weights_only=True"),
        (8, "keras.saving.load_model(safe_mode=False)"),
        (8, "keras.saving.load_model outside vlm.saving"),
        (9, "keras.config.enable_unsafe_deserialization"),
    ]


@SOURCES_ONLY
def test_no_pickle_or_unsafe_load_in_the_sources():
    files = [*REPO.glob("vlm/**/*.py"), *REPO.glob("configs/*.py"), *REPO.glob("benchmarks/*.py"),
             *REPO.glob("tests/**/*.py"), REPO / "train.py", REPO / "evaluate.py"]
    assert len(files) > 40
    found = {str(path.relative_to(REPO)): unsafe_calls(path.read_text(), str(path))
             for path in files}
    assert {path: calls for path, calls in found.items() if calls} == {}


def downgrade(source, target):
    """Writes `source` with the kernel layouts of files saved before they became 2-D."""
    import io

    import h5py

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        names = []
        weights.visititems(lambda name, node: names.append(name)
                           if isinstance(node, h5py.Dataset) else None)
        heads, dim = 4, 32  # the shipped model's decoder
        for name in names:
            value = weights[name][()]
            if name.endswith("qkv_dense/vars/0"):
                old = value.reshape(len(value), heads, 3, dim).transpose(0, 2, 1, 3)
            elif name.endswith("qkv_dense/vars/1"):
                old = value.reshape(heads, 3, dim).transpose(1, 0, 2)
            elif "cross_attention/query_dense/vars/" in name:
                old = value.reshape(value.shape[:-1] + (heads, dim))
            else:
                continue
            del weights[name]
            weights.create_dataset(name, data=old)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_a_file_with_the_old_kernel_layouts_is_named_and_upgrades_to_the_same_model(tmp_path):
    from vlm.saving import upgrade_keras_file

    old = tmp_path / "old.keras"
    downgrade(MODEL, old)
    with pytest.raises(ValueError, match=r"old\.keras was saved before .*upgrade_keras_file"):
        load_keras_file(old)
    new = tmp_path / "new.keras"
    assert upgrade_keras_file(old, new) == 3 * 4  # 3 blocks x (qkv, query) x (kernel, bias)
    assert upgrade_keras_file(new, tmp_path / "again.keras") == 0
    upgraded, shipped = load_captioner(new), load_captioner(MODEL)
    for a, b in zip(upgraded.weights, shipped.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_file_from_before_the_preprocessor_loads_as_the_same_model(tmp_path):
    """Files whose Captioner held its tokenizer directly still load and caption alike."""
    from tests.generation.test_generator import golden_images

    def to_old_config(config):
        preprocessor = config["config"].pop("preprocessor")
        config["config"]["tokenizer"] = preprocessor["config"]["tokenizer"]

    with zipfile.ZipFile(MODEL) as archive:
        vocabulary = archive.read("assets/preprocessor/tokenizer/vocabulary.txt")
    source = rewrite(MODEL, tmp_path / "source.keras")
    with zipfile.ZipFile(source) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if not n.startswith("assets/")}
    with zipfile.ZipFile(tmp_path / "no_assets.keras", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    old = rewrite(tmp_path / "no_assets.keras", tmp_path / "old.keras", to_old_config,
                  extra_members=[("assets/tokenizer/vocabulary.txt", vocabulary)])
    with zipfile.ZipFile(old) as archive:
        assert "tokenizer" in json.loads(archive.read("config.json"))["config"]
    model, shipped = load_captioner(old), load_captioner(MODEL)
    assert model.preprocessor.image_size == 64 and model.preprocessor.sequence_length == 32
    assert model.tokenizer.get_vocabulary() == shipped.tokenizer.get_vocabulary()
    images = golden_images(4)
    assert model.generate(images) == shipped.generate(images)


def unnest_backbone(source, target):
    """Writes `source` as it was saved before tasks held a backbone: its parts kept directly."""
    import h5py

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    backbone = config["config"].pop("backbone")
    config["config"].update({k: v for k, v in backbone["config"].items()
                             if k not in ("name", "trainable")})
    members["config.json"] = json.dumps(config).encode()
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        group = next(name for name in weights["layers"] if name.endswith("backbone"))
        for name in list(weights[f"layers/{group}/layers"]):
            if not name.startswith("input_layer"):
                weights.move(f"layers/{group}/layers/{name}", f"layers/{name}")
        del weights[f"layers/{group}"]
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


@pytest.mark.parametrize("name", ["shapes", "shapes_change", "shapes_qa_adapter"])
def test_a_file_from_before_the_backbones_loads_as_the_same_model(name, tmp_path):
    """A task that kept its encoder and decoder directly loads with them in its backbone."""
    from vlm.saving import upgrade_keras_file

    shipped_path = REPO / "saved_models" / f"{name}.keras"
    old = unnest_backbone(shipped_path, tmp_path / "old.keras")
    with zipfile.ZipFile(old) as archive:
        assert "backbone" not in json.loads(archive.read("config.json"))["config"]
    model, shipped = load_captioner(old), load_captioner(shipped_path)
    assert type(model.backbone) is type(shipped.backbone)
    assert [w.path for w in model.weights] == [w.path for w in shipped.weights]
    for a, b in zip(model.weights, shipped.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert upgrade_keras_file(old, tmp_path / "new.keras") == 0  # no kernel layout to change
    assert isinstance(keras.saving.load_model(tmp_path / "new.keras"), type(shipped))
