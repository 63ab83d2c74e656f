"""The public API: `vlm.<package>.<Name>` after a bare `import vlm`, as keras-hub's reads."""

import os
import re
import subprocess
import sys

import pytest

import vlm


def test_import_vlm_picks_no_backend_and_reaches_every_package():
    # A fresh interpreter: this one has imported Keras already.
    code = ("import sys, vlm; assert 'keras' not in sys.modules; "
            "print(vlm.metrics.score_captions(['a red circle'], [['a red circle']])['bleu_1']); "
            "assert 'keras' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip()) == pytest.approx(1.0)


@pytest.mark.parametrize("package", ["layers", "models", "samplers", "metrics", "export"])
def test_each_package_exports_what_it_lists(package):
    module = getattr(vlm, package)
    names = getattr(module, "__all__", None)
    assert names, f"vlm.{package} lists no public names"
    for name in names:
        assert name.isupper() or getattr(module, name).__module__.startswith(f"vlm.{package}")
    assert package in dir(vlm)
    with pytest.raises(AttributeError, match="no attribute 'modles'"):
        vlm.modles  # noqa: B018


def test_the_readme_layout_block_matches_the_tree():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        block = f.read().split("```\n")[1]  # the first block: the layout
    listed, parent = set(), ""
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+/|\S+\.py)(?:\s|$)", line)
        if not match:
            continue
        indent, path = match.groups()
        if not indent:  # a top-level entry; only vlm/'s entries are indented below it
            parent = "vlm/" if path == "vlm/" else ""
        else:
            path = parent + path
        assert os.path.exists(os.path.join(root, path)), f"README lists {path}"
        listed.add(path.rstrip("/"))
    packages = {f"vlm/{name}" for name in os.listdir(os.path.join(root, "vlm"))
                if os.path.isfile(os.path.join(root, "vlm", name, "__init__.py"))}
    assert packages <= listed, f"README's layout leaves out {sorted(packages - listed)}"
