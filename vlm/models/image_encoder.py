"""The image encoder: keras-hub's ViT over patches, as a sequence of patch tokens."""

import keras
import keras_hub
from keras import ops

from vlm.layers.patch_position_embedding import PatchPositionEmbedding

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="vlm")
class ImageEncoder(keras.layers.Layer):
    """Turns `(batch, H, W, 3)` images in [0, 255] into patch embeddings.

    Normalises the pixels, runs a keras-hub `ViTBackbone`, drops its class
    token if it has one (so every output token is a patch), and optionally
    adds a fixed 2D position code so the decoder can read where a patch is.

    Args:
        backbone: a `keras_hub.models.ViTBackbone`.
        image_mean: per-channel mean of pixels scaled to [0, 1].
        image_std: per-channel standard deviation of pixels scaled to [0, 1].
        add_2d_positions: bool. Add `PatchPositionEmbedding` to the output.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        images: `(batch, image_size, image_size, 3)` floats in [0, 255].

    Returns:
        `(batch, num_patches, hidden_dim)` patch embeddings.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.add_2d_positions = add_2d_positions
        self.image_size = backbone.image_shape[0]
        patch_size = backbone.patch_size  # an int or (height, width)
        self.patch_size = patch_size[0] if isinstance(patch_size, (tuple, list)) else patch_size
        self.grid_size = self.image_size // self.patch_size
        self.hidden_dim = backbone.hidden_dim
        self.patch_positions = (
            PatchPositionEmbedding(
                self.grid_size, name="patch_positions", dtype=self.dtype_policy
            )
            if add_2d_positions
            else None
        )

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
        dtype=None,
        **kwargs,
    ):
        """Builds a fresh ViT of the given sizes, or loads `preset`.

        `preset` (for example `"vit_base_patch16_224_imagenet"`) downloads
        pretrained keras-hub weights, and its sizes win over the arguments;
        the image statistics switch to ImageNet's.
        """
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
            backbone = keras_hub.models.ViTBackbone(
                image_shape=(image_size, image_size, 3),
                patch_size=patch_size,
                num_layers=num_layers,
                num_heads=num_heads,
                hidden_dim=hidden_dim,
                mlp_dim=mlp_dim,
                dropout_rate=dropout,
                use_class_token=False,
                dtype=dtype,
            )
        return cls(backbone, dtype=dtype, **kwargs)

    def build(self, images_shape):
        self.backbone.build(images_shape)
        if self.patch_positions is not None:
            self.patch_positions.build((None, self.grid_size**2, self.hidden_dim))

    def call(self, images, training=None):
        mean = ops.convert_to_tensor(self.image_mean, self.compute_dtype) * 255.0
        std = ops.convert_to_tensor(self.image_std, self.compute_dtype) * 255.0
        x = (ops.cast(images, self.compute_dtype) - mean) / std
        patches = self.backbone(x, training=training)
        if self.backbone.use_class_token:
            patches = patches[:, 1:]
        if self.patch_positions is not None:
            patches = self.patch_positions(patches)
        return patches

    def compute_output_shape(self, images_shape):
        return (images_shape[0], self.grid_size**2, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "image_mean": self.image_mean,
                "image_std": self.image_std,
                "add_2d_positions": self.add_2d_positions,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
