"""Caption styles of still scenes: what a long caption asserts; the pixels and attributes never change with it."""
import numpy as np
import pytest

from dam_model.synthetic import CAPTION_STYLES, generate_scene, long_caption


def test_styles_change_only_the_long_caption():
    scenes = {style: generate_scene(7, 3, caption_style=style) for style in CAPTION_STYLES}
    default = generate_scene(7, 3)
    for scene in scenes.values():
        assert np.array_equal(scene.image, default.image)
        assert [o.attributes for o in scene.objects] == [o.attributes for o in default.objects]
        assert [o.short_caption for o in scene.objects] == [o.short_caption for o in default.objects]
    assert [o.long_caption for o in scenes["full"].objects] == [o.long_caption for o in default.objects]


def test_what_each_style_asserts():
    attributes = {"size": "large", "color": "orange", "shape": "star", "position": "top left",
                  "context": "the leftmost of two orange stars"}
    assert long_caption(attributes) == ("A large orange star in the top left of the image. "
                                        "It is the leftmost of two orange stars.")
    assert long_caption(attributes, "position") == "A large orange star in the top left of the image."
    assert long_caption(attributes, "appearance") == "A large orange star."
    with pytest.raises(ValueError, match="caption style"):
        generate_scene(7, 0, caption_style="poetic")
