"""A gallery PNG: images with their generated caption and references."""

import textwrap

from vlm.viz.figures import as_unit_image
from vlm.viz.figures import panel_grid
from vlm.viz.figures import save_figure


def plot_gallery(entries, path, columns=4, title=None):
    """Writes a grid of captioned images.

    Args:
        entries: list of dicts with `image` ((S, S, 3) in [0, 255]),
            `caption` (generated), `references` (list of str) and optional
            `label` (for example "worst CIDEr-D 0.12").
        path: output PNG path.
        columns: images per row.
        title: optional figure title.
    """
    if not entries:
        raise ValueError("`entries` is empty: nothing to draw.")
    figure, axes = panel_grid(len(entries), columns, (4.2, 5.4))
    for axis, entry in zip(axes, entries):
        axis.imshow(as_unit_image(entry["image"]))
        lines = [entry.get("label", "")] if entry.get("label") else []
        lines += textwrap.wrap("generated: " + entry["caption"], 44)
        for reference in entry["references"][:2]:
            lines += textwrap.wrap("reference: " + reference, 44)
        axis.set_title("\n".join(lines), fontsize=7.5, loc="left")
    save_figure(figure, axes, path, title, title_size=12, dpi=100)
