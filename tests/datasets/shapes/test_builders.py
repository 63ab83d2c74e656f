import pytest

from vlm.datasets.shapes import builders


@pytest.mark.parametrize("builder_class, cache_name", [
    (builders.ShapesCaptions, "shapes_captions"),
    (builders.ShapesChange, "shapes_change"),
    (builders.ShapesQA, "shapes_qa"),
])
def test_names_are_those_of_the_prepared_caches(builder_class, cache_name):
    assert builder_class.name == cache_name
    config = builders.builder_config(builder_class, image_size=32, train_size=12,
                                     validation_size=4, test_size=3, seed=1)
    assert isinstance(config, builders.ShapesConfig)
    assert config.name == "s32_tr12_va4_te3_seed1"
    assert builders.builder_config(builder_class) is builder_class.builder_configs[
        "s64_tr20000_va1000_te1000_seed0"]
    with pytest.raises(ValueError, match="train_size=0"):
        builders.builder_config(builder_class, train_size=0)
    with pytest.raises(ValueError, match="test_size=0"):
        builders.builder_config(builder_class, test_size=0)


def test_splits_are_different_streams():
    seeds = {builders.split_seed(0, split) for split in builders.SPLITS}
    assert len(seeds) == 3 and builders.split_seed(0, "train") != builders.split_seed(1, "train")
