"""Per-word cross-attention heat-maps over the image patches."""

import numpy as np
from keras import ops

from vlm.viz.figures import as_unit_image
from vlm.viz.figures import panel_grid
from vlm.viz.figures import save_figure


def word_attention(model, image, token_ids, layer=-1):
    """Cross-attention of each generated token over the patches.

    One teacher-forced pass over `[START] + token_ids` with
    `return_attention_scores=True` (decoding itself stays on the fused path):
    the map of token `i` is what the query that predicted it attended to,
    averaged over heads.

    Args:
        model: a `Captioner`.
        image: `(S, S, 3)` float image in [0, 255] at the model's size.
        token_ids: the generated ids, up to and including the end token.
        layer: which decoder block (default the last).

    Returns:
        `(words, maps)`: the token strings and a `(len(words), grid, grid)`
        float32 array; each map sums to 1.
    """
    tokenizer = model.tokenizer
    ids = [int(t) for t in token_ids]
    if tokenizer.end_token_id in ids:
        ids = ids[: ids.index(tokenizer.end_token_id) + 1]
    ids = [t for t in ids if t != tokenizer.pad_token_id]
    if not ids:
        raise ValueError("`token_ids` holds no generated token.")
    encoder, decoder = model.backbone.encoder, model.backbone.decoder
    num_layers = decoder.num_layers
    if not -num_layers <= layer < num_layers:
        raise ValueError(
            f"`layer` must be in [{-num_layers}, {num_layers - 1}]. Received: layer={layer}"
        )
    inputs = np.array([[tokenizer.start_token_id] + ids[:-1]], "int32")
    patches = encoder(ops.convert_to_tensor(image[None], "float32"), training=False)
    _, scores = decoder(inputs, patches, return_attention_scores=True, training=False)
    maps = ops.convert_to_numpy(ops.mean(scores[layer], axis=1))[0]  # (tokens, patches)
    grid = encoder.grid_size
    # With a `SideMemory` a patch has several slots (itself, then each side,
    # group by group): what the key matched is the patch, so they add up.
    maps = maps.reshape(len(ids), -1, grid * grid).sum(axis=1)
    words = [tokenizer.id_to_token(t) for t in ids]
    return words, maps.reshape(len(ids), grid, grid).astype("float32")


def plot_attention_grid(image, words, maps, path, caption=None, columns=5):
    """Writes a PNG: the image, then each word's map overlaid on it.

    Args:
        image: `(S, S, 3)` image in [0, 255].
        words: token strings, one per map.
        maps: `(len(words), grid, grid)` attention weights.
        path: output PNG path.
        caption: optional title for the whole figure.
        columns: panels per row.
    """
    image = as_unit_image(image)
    size = image.shape[0]
    figure, axes = panel_grid(len(words) + 1, columns, (2.2, 2.4))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for axis, word, weights in zip(axes[1:], words, maps):
        axis.imshow(image)
        # Nearest upsampling keeps patch borders honest: one block per patch.
        overlay = np.kron(weights, np.ones((size // weights.shape[0],) * 2))
        axis.imshow(overlay, cmap="inferno", alpha=0.6, vmin=0.0, vmax=float(maps.max()),
                    extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        axis.set_title(word, fontsize=10)
    save_figure(figure, axes, path, caption)
