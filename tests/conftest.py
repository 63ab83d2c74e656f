"""Suite-wide settings: no test writes to the user's cache or downloads."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Points VLM_CACHE_DIR (datasets, TFDS) at a per-session folder."""
    patcher = pytest.MonkeyPatch()
    patcher.setenv("VLM_CACHE_DIR", str(tmp_path_factory.mktemp("vlm_cache")))
    yield
    patcher.undo()


@pytest.fixture(scope="session", autouse=True)
def _eager_torch_inference():
    """PyTorch decodes eagerly here, as its compiled path takes tens of seconds per shape.

    `tests/generation/test_torch_compiled.py` opts back in and checks the
    compiled path against this one. Subprocesses (train.py, evaluate.py)
    inherit the setting.
    """
    patcher = pytest.MonkeyPatch()
    patcher.setenv("VLM_TORCH_INFERENCE", "eager")
    yield
    patcher.undo()


# Files of minutes-long tests, collected first: pytest-xdist hands whole files
# to its workers in collection order, so these start early and the short ones
# fill in at the end, and the two workers finish together.
_LONG_FILES = ("test_distribution.py", "test_resume.py", "test_numerics.py", "test_train.py",
               "export/test_saved_model.py", "models/test_multi_image_captioner.py",
               "models/test_captioner.py", "test_benchmarks.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, name in enumerate(_LONG_FILES) if path.endswith(name)),
                    len(_LONG_FILES))
    items.sort(key=rank)  # stable: the order within a file is kept
