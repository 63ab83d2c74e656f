"""Which image each text token may attend to, from where the images sit in the text."""

from keras import ops

MODES = ("immediate", "all_previous")


def media_attention_mask(
    token_ids,
    image_token_id,
    num_images,
    patches_per_image,
    mode="immediate",
    previous_images=None,
):
    """Boolean `(batch, length, num_images * patches_per_image)` cross-attention mask.

    Images are numbered by the `image_token_id` tokens that mark where they
    sit in the text: the first marker is image 1, and the patches of image
    `n` are positions `(n - 1) * patches_per_image ...` of the context. A
    token's image count is the number of markers up to and including it
    (Flamingo's `text_time`). In mode "immediate" it sees the patches of the
    last image before it only; in "all_previous" those of every image before
    it. Text before the first marker sees nothing (`CrossAttention` then
    returns zeros for it), and images past the last marker (padding) are
    never seen.

    Decoding extends the mask by one row per step: call it on the new token
    with `previous_images`, the markers among the earlier tokens.

    Args:
        token_ids: int `(batch, length)`.
        image_token_id: int, the id of the `<image>` marker.
        num_images: int, images per example in the context (padding
            included).
        patches_per_image: int, context positions per image.
        mode: "immediate" or "all_previous".
        previous_images: optional int `(batch,)`, markers before
            `token_ids[:, 0]` (0 when None).

    Returns:
        bool `(batch, length, num_images * patches_per_image)`.

    Example:

    >>> ids = [[7, 5, 5, 7, 5]]                      # 7 is <image>
    >>> media_attention_mask(ids, 7, 2, 1, "immediate")[0].astype(int)
    [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]]
    >>> step = media_attention_mask([[5]], 7, 2, 1, previous_images=[2])
    >>> step.shape                                   # the next row
    (1, 1, 2)
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    text_time = ops.cumsum(ops.cast(ops.equal(token_ids, image_token_id), "int32"), axis=1)
    if previous_images is not None:
        text_time = text_time + ops.expand_dims(ops.cast(previous_images, "int32"), 1)
    # The image number, 1-based, of every context position.
    image_of_patch = ops.arange(num_images * patches_per_image, dtype="int32")
    image_of_patch = image_of_patch // patches_per_image + 1
    text_time = ops.expand_dims(text_time, -1)  # (batch, length, 1)
    if mode == "immediate":
        return ops.equal(text_time, image_of_patch)
    return ops.less_equal(image_of_patch, text_time)


def count_images(token_ids, image_token_id):
    """int32 `(batch,)`: the `<image>` markers in each row of `token_ids`."""
    is_image = ops.equal(token_ids, image_token_id)
    return ops.sum(ops.cast(is_image, "int32"), axis=1)
