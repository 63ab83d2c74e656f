"""Shared matplotlib plumbing for `vlm.viz`: panel grids and saving."""

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def panel_grid(panels, columns, panel_size):
    """A figure with `panels` axes in rows of `columns`; returns (figure, flat axes)."""
    rows = -(-panels // columns)
    width, height = panel_size
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows))
    return figure, np.atleast_1d(axes).ravel()


def save_figure(figure, axes, path, title=None, title_size=11, dpi=110):
    """Hides the axes, adds the title, writes the PNG and frees the figure."""
    for axis in axes:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=title_size)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def as_unit_image(image):
    """A [0, 255] image as floats in [0, 1] for `imshow`."""
    return np.clip(np.asarray(image, "float32") / 255.0, 0.0, 1.0)
