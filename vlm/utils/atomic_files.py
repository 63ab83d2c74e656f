"""Files that a kill at any instant leaves whole: the previous version or the new one.

Checkpoints, backups, histories and reports are written through `atomic_write`:
a temporary file beside the target, flushed to disk, then renamed onto it.
"""

import json
import os


def atomic_write(path, write):
    """Writes a file through a temporary file beside it, then renames it into place.

    `write(temporary)` writes the whole file at `temporary`, a name in the
    same folder that keeps `path`'s ending (Keras picks the format from it).
    The temporary file is flushed to disk, then `os.replace`d onto `path`:
    whenever the process dies, `path` holds either the previous file or the
    new one, never a part of one. A temporary left by a killed process is
    overwritten by the next save.

    Args:
        path: the file to write.
        write: callable taking the temporary path.

    Example:

    >>> atomic_write("saved_models/run.keras", model.save)
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, ".tmp-" + os.path.basename(path))
    try:
        write(temporary)
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Makes a rename in `directory` durable (POSIX; a no-op where unsupported)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_json_atomically(path, data):
    """Writes `data` as indented JSON through `atomic_write`."""

    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    atomic_write(path, write)
