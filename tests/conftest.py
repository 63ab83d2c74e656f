"""Suite-wide settings: no test writes to the user's cache or downloads."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Points VLM_CACHE_DIR (datasets, TFDS) at a per-session folder."""
    patcher = pytest.MonkeyPatch()
    patcher.setenv("VLM_CACHE_DIR", str(tmp_path_factory.mktemp("vlm_cache")))
    yield
    patcher.undo()
