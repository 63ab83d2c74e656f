"""The image encoder: keras-hub's ViT over patches, as a sequence of patch tokens."""

import keras
import keras_hub
from keras import ops

from vlm.layers.conv_stem import ConvStem
from vlm.layers.patch_position_embedding import PatchPositionEmbedding
from vlm.layers.relative_position_block import DirectionCones
from vlm.layers.relative_position_block import RelativePositionBlock
from vlm.layers.side_memory import SideMemory

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="vlm")
class ImageEncoder(keras.layers.Layer):
    """Turns `(batch, H, W, 3)` images in [0, 255] into patch embeddings.

    Normalises the pixels, optionally runs a convolutional stem, runs a
    keras-hub `ViTBackbone`, drops its class token if it has one (so every
    output token is a patch), and optionally adds a fixed 2D position code
    so the decoder can read where a patch is.

    Args:
        backbone: a `keras_hub.models.ViTBackbone`. After a `stem`, its
            `image_shape` is the stem's output grid and channels.
        image_mean: per-channel mean of pixels scaled to [0, 1].
        image_std: per-channel standard deviation of pixels scaled to [0, 1].
        add_2d_positions: bool. Add `PatchPositionEmbedding` to the output.
        stem_positions: bool. Also add the 2D sine-cosine code to the stem's
            output grid, so the ViT's own attention can tell where a cell is
            from its first layer (its learned 1D embedding starts at random).
        stem: optional `vlm.layers.ConvStem` between the pixels and the ViT.
            A patch then covers `stem.stride * backbone.patch_size` pixels.
        relative_blocks: optional list of `vlm.layers.RelativePositionBlock`
            run after the ViT and its 2D code: attention that knows each
            pair's 2D offset, so a patch can gather what lies beside it.
        side_memory: optional `vlm.layers.SideMemory` run last: the output
            then holds, besides each patch, a slot per side of it.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        images: `(batch, image_size, image_size, 3)` floats in [0, 255].

    Returns:
        `(batch, num_patches, hidden_dim)` patch embeddings (with a
        `side_memory`, its slots: `SideMemory`'s output).

    Example:

    >>> encoder = ImageEncoder.from_sizes(image_size=16, patch_size=4,
    ...     num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> encoder(keras.ops.zeros((2, 16, 16, 3))).shape
    (2, 16, 16)
    """

    def __init__(
        self,
        backbone,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        add_2d_positions=True,
        stem=None,
        stem_positions=False,
        relative_blocks=None,
        side_memory=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.side_memory = side_memory
        if stem_positions and stem is None:
            raise ValueError("`stem_positions` adds a position code to a stem's output; "
                             "pass a `stem`. Received: stem=None")
        self.stem_positions = bool(stem_positions)
        self.relative_blocks = list(relative_blocks or [])
        self.backbone = backbone
        self.stem = stem
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.add_2d_positions = add_2d_positions
        stride = stem.stride if stem is not None else 1
        self.image_size = backbone.image_shape[0] * stride
        patch_size = backbone.patch_size  # an int or (height, width)
        self.patch_size = stride * (
            patch_size[0] if isinstance(patch_size, (tuple, list)) else patch_size)
        self.grid_size = self.image_size // self.patch_size
        self.hidden_dim = backbone.hidden_dim
        self.patch_positions = (
            PatchPositionEmbedding(
                self.grid_size, name="patch_positions", dtype=self.dtype_policy
            )
            if add_2d_positions
            else None
        )
        self.stem_grid = self.image_size // stride
        self.stem_position_code = (
            PatchPositionEmbedding(self.stem_grid, name="stem_positions",
                                   dtype=self.dtype_policy)
            if self.stem_positions else None)

    @classmethod
    def from_sizes(
        cls,
        image_size,
        patch_size,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        dropout=0.0,
        preset=None,
        stem_filters=(),
        stem_coordinates=False,
        stem_positions=False,
        relative_layers=0,
        relative_init="zeros",
        side_memory=False,
        dtype=None,
        **kwargs,
    ):
        """Builds a fresh ViT of the given sizes, or loads `preset`.

        `preset` (for example `"vit_base_patch16_224_imagenet"`) downloads
        pretrained keras-hub weights, and its sizes win over the arguments;
        the image statistics switch to ImageNet's. `stem_filters` puts a
        `ConvStem` of those channels before a fresh ViT, which then embeds
        `patch_size / 2 ** len(stem_filters)` cells of the stem's grid;
        `stem_coordinates` gives its convolutions x and y maps.
        `relative_layers` `RelativePositionBlock`s (the ViT's heads and MLP
        width) follow the ViT; `relative_init="directions"` starts their first
        four heads looking left, right, up and down (`DirectionCones`).
        `side_memory` ends the encoder with a `SideMemory` of four heads.
        """
        stride = 2 ** len(stem_filters)
        if stem_filters and (preset is not None or patch_size % stride):
            raise ValueError(
                "`stem_filters` needs a fresh ViT whose `patch_size` is a multiple of "
                f"2 ** len(stem_filters). Received: stem_filters={tuple(stem_filters)}, "
                f"patch_size={patch_size}, preset={preset!r}")
        stem = (ConvStem(stem_filters, coordinates=stem_coordinates, name="stem", dtype=dtype)
                if stem_filters else None)
        if preset is not None:
            backbone = keras_hub.models.ViTBackbone.from_preset(preset, dtype=dtype)
            kwargs.setdefault("image_mean", IMAGENET_MEAN)
            kwargs.setdefault("image_std", IMAGENET_STD)
        else:
            if image_size % patch_size:
                raise ValueError(
                    "`patch_size` must divide `image_size`. Received: "
                    f"image_size={image_size}, patch_size={patch_size}"
                )
            channels = stem_filters[-1] if stem_filters else 3
            backbone = keras_hub.models.ViTBackbone(
                image_shape=(image_size // stride, image_size // stride, channels),
                patch_size=patch_size // stride,
                num_layers=num_layers,
                num_heads=num_heads,
                hidden_dim=hidden_dim,
                mlp_dim=mlp_dim,
                dropout_rate=dropout,
                use_class_token=False,
                dtype=dtype,
            )
        patch = backbone.patch_size  # an int or (height, width)
        grid = backbone.image_shape[0] // (patch[0] if isinstance(patch, (tuple, list)) else patch)
        offset_init = DirectionCones() if relative_init == "directions" else "zeros"
        relative_blocks = [RelativePositionBlock(grid, num_heads, mlp_dim, dropout,
                                                 offset_bias_initializer=offset_init,
                                                 dtype=dtype, name=f"relative_block_{i}")
                           for i in range(relative_layers)]
        sides = (SideMemory(grid, 4, backbone.hidden_dim // num_heads, dtype=dtype,
                            name="side_memory") if side_memory else None)
        return cls(backbone, stem=stem, stem_positions=stem_positions,
                   relative_blocks=relative_blocks, side_memory=sides, dtype=dtype, **kwargs)

    def build(self, images_shape):
        if self.stem is not None:
            if not self.stem.built:  # loading builds it from its own config first
                self.stem.build(images_shape)
            images_shape = self.stem.compute_output_shape(images_shape)
            if self.stem_position_code is not None:
                self.stem_position_code.build((None, self.stem_grid**2, images_shape[-1]))
        self.backbone.build(images_shape)
        if self.patch_positions is not None:
            self.patch_positions.build((None, self.grid_size**2, self.hidden_dim))
        for block in self.relative_blocks:
            if not block.built:
                block.build((None, self.grid_size**2, self.hidden_dim))
        if self.side_memory is not None and not self.side_memory.built:
            self.side_memory.build((None, self.grid_size**2, self.hidden_dim))

    def call(self, images, training=None):
        mean = ops.convert_to_tensor(self.image_mean, self.compute_dtype) * 255.0
        std = ops.convert_to_tensor(self.image_std, self.compute_dtype) * 255.0
        x = (ops.cast(images, self.compute_dtype) - mean) / std
        if self.stem is not None:
            x = self.stem(x)
            if self.stem_position_code is not None:
                cells = ops.reshape(x, (-1, self.stem_grid**2, ops.shape(x)[-1]))
                x = ops.reshape(self.stem_position_code(cells), ops.shape(x))
        patches = self.backbone(x, training=training)
        if self.backbone.use_class_token:
            patches = patches[:, 1:]
        if self.patch_positions is not None:
            patches = self.patch_positions(patches)
        for block in self.relative_blocks:
            patches = block(patches, training=training)
        if self.side_memory is not None:
            patches = self.side_memory(patches)
        return patches

    def compute_output_shape(self, images_shape):
        patches_shape = (images_shape[0], self.grid_size**2, self.hidden_dim)
        if self.side_memory is not None:
            return self.side_memory.compute_output_shape(patches_shape)
        return patches_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "image_mean": self.image_mean,
                "image_std": self.image_std,
                "add_2d_positions": self.add_2d_positions,
                "stem_positions": self.stem_positions,
                "relative_blocks": [keras.saving.serialize_keras_object(b)
                                    for b in self.relative_blocks],
                "side_memory": (keras.saving.serialize_keras_object(self.side_memory)
                                if self.side_memory is not None else None),
                "stem": (keras.saving.serialize_keras_object(self.stem)
                         if self.stem is not None else None),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("stem") is not None:
            config["stem"] = keras.saving.deserialize_keras_object(config["stem"])
        config["relative_blocks"] = [keras.saving.deserialize_keras_object(b)
                                     for b in config.get("relative_blocks") or []]
        if config.get("side_memory") is not None:
            config["side_memory"] = keras.saving.deserialize_keras_object(config["side_memory"])
        return cls(**config)
