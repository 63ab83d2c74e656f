"""Where `vlm` keeps downloaded data sets and other cached files."""

import os
import pathlib

CACHE_ENV_VAR = "VLM_CACHE_DIR"


def cache_dir():
    """Returns the root folder for cached data (created by whoever writes there).

    The folder is `$VLM_CACHE_DIR` when that environment variable is set and
    not empty, else `~/.cache/vlm`. It is read at each call, so tests can point
    it at a temporary folder with `monkeypatch.setenv`.

    Returns:
        An absolute `pathlib.Path`, `~` expanded. The folder may not exist yet.

    Example:

    >>> os.environ["VLM_CACHE_DIR"] = "/tmp/vlm-cache"
    >>> cache_dir()
    PosixPath('/tmp/vlm-cache')
    """
    root = os.environ.get(CACHE_ENV_VAR) or os.path.join("~", ".cache", "vlm")
    return pathlib.Path(root).expanduser().absolute()


def tfds_data_dir():
    """Returns the TensorFlow Datasets folder inside `cache_dir()`.

    Returns:
        `cache_dir() / "tensorflow_datasets"` as a `pathlib.Path`.
    """
    return cache_dir() / "tensorflow_datasets"
