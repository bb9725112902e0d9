"""Focal prompt geometry, input validation, the vectorised preprocessing and the video frame rule."""
from __future__ import annotations

import numpy as np
import pytest

from PIL import Image

from dam_model.focal import (focal_crop_box, focal_crop_from_box, full_view, is_full_image, mask_box,
                             normalisation_lut, normalise_into, preprocess_regions, select_video_frames)
from dam_model.mask_resize import HORIZONTAL_FIRST, VERTICAL_FIRST, pass_order, resize_mask


def box_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


# (image h, w, mask box x0, y0, x1, y1) -> expected crop (x0, y0, x1, y1), worked out by hand from the release rule
CROP_TABLE = [
    # interior 60x40 box: height raised to 48 around centre y 120 (origin 96), then 3x each way, fits
    ((300, 400, 150, 100, 210, 140), (90, 48, 270, 192)),
    # 10x10 box in the interior: raised to 48x48 around centre (105, 105) -> origin (81, 81)
    ((400, 400, 100, 100, 110, 110), (33, 33, 177, 177)),
    # 3x3 box in the corner: centre 1.5 -> int(1.5 - 24) = int(-22.5) = -22 (truncation, floor would give -23)
    ((200, 200, 0, 0, 3, 3), (0, 0, 74, 74)),
    # 20x20 box touching the right and bottom edges: 48x48 around (110, 90) -> origin (86, 66), clipped, no padding
    ((100, 120, 100, 80, 120, 100), (38, 18, 120, 100)),
    # odd sizes: w = 17 (< 48), centre x 23.5 -> int(-0.5) = 0; h = 60, y0 = 10 -> crop rows up to 10 + 120
    ((150, 150, 15, 10, 32, 70), (0, 0, 96, 130)),
    # full-image mask: crop covers the whole image
    ((50, 70, 0, 0, 70, 50), (0, 0, 70, 50)),
]


@pytest.mark.parametrize("spec, crop", CROP_TABLE)
def test_crop_geometry_table(spec, crop):
    h, w, x0, y0, x1, y1 = spec
    mask = box_mask(h, w, x0, y0, x1, y1)
    assert mask_box(mask) == (x0, y0, x1 - x0, y1 - y0)
    assert focal_crop_box(mask) == crop


def test_truncation_not_floor():
    # centre 1.5, size 48: int(-22.5) = -22, so the crop ends at -22 + 96 = 74; floor would give 73
    assert focal_crop_from_box((0, 0, 3, 3), 500, 500)[2:] == (74, 74)


def test_full_image_mask_takes_plain_path():
    image = np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    masks = [np.ones((160, 200), bool), box_mask(160, 200, 20, 10, 25, 15) > 0,
             box_mask(160, 200, 60, 50, 80, 70) > 0]  # 20 px box in the middle: 48 -> 144 x 144 crop, not full
    batch = preprocess_regions(image, masks, 28)
    assert batch.is_focal.tolist() == [False, True, True]
    assert is_full_image(batch.crop_boxes[0], 160, 200)
    # a small mask in a small image: the 48 px minimum x 3 covers everything -> plain path too
    small = preprocess_regions(image[:40, :50], [masks[1][:40, :50]], 28)
    assert small.is_focal.tolist() == [False] and small.crop_boxes[0].tolist() == [0, 0, 50, 40]
    assert np.array_equal(batch.pixel_values_u8[0, :4], batch.pixel_values_u8[0, 4:])


def test_empty_mask_is_rejected():
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="empty"):
        preprocess_regions(image, [np.zeros((20, 20), bool)], 14)
    with pytest.raises(ValueError, match="empty"):
        focal_crop_box(np.zeros((5, 5), np.uint8))


def test_mask_size_mismatch_is_rejected():
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="differs from image size"):
        preprocess_regions(image, [np.ones((30, 20), bool)], 14)


def naive_region(image, mask, size):
    """A straightforward per-region pipeline as the release writes it (PIL RGB views, 3-channel mask)."""
    from PIL import Image

    lut = ((np.arange(256, dtype=np.float64) / 255).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    x0, y0, x1, y1 = focal_crop_box(mask)
    mask_rgb = np.repeat((mask > 0).astype(np.uint8)[:, :, None] * 255, 3, axis=2)
    views = []
    for img in (image, image[y0:y1, x0:x1]):
        views.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)).transpose(2, 0, 1))
    masks = []
    for m in (mask_rgb, mask_rgb[y0:y1, x0:x1]):
        masks.append(np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((size, size), Image.BICUBIC))[:, :, 0])
    return lut[np.concatenate([views[0], masks[0][None], views[1], masks[1][None]])]


def test_vectorised_equals_naive_per_region(scene):
    images, masks = scene
    for image, region_masks in zip(images, masks):
        batch = preprocess_regions(image, region_masks, 28)
        for i, m in enumerate(region_masks):
            assert np.array_equal(batch.pixel_values[i].numpy(), naive_region(image, m, 28))


def test_a_kept_full_view_gives_the_same_inputs(scene):
    images, masks = scene
    plain = preprocess_regions(images[0], masks[0], 28)
    shared = preprocess_regions(images[0], masks[0], 28, shared_view=full_view(images[0], 28))
    assert np.array_equal(plain.pixel_values.numpy(), shared.pixel_values.numpy())


def test_pil_and_uint8_masks_accepted(scene):
    from PIL import Image

    images, masks = scene
    a = preprocess_regions(Image.fromarray(images[0]), [Image.fromarray(masks[0][1].astype(np.uint8) * 255)], 28)
    b = preprocess_regions(images[0], [masks[0][1].astype(np.uint8)], 28)
    assert np.array_equal(a.pixel_values_u8, b.pixel_values_u8)


def test_arithmetic_normalisation_equals_the_official_table_on_every_level():
    levels = np.arange(256, dtype=np.uint8)
    got = np.empty(256, dtype=np.float32)
    normalise_into(got, levels)
    assert np.array_equal(got, normalisation_lut())


# down-, up- and same-size resizes; tall and wide images (Pillow runs the vertical pass first for some of them)
@pytest.mark.parametrize("height, width, size", [(96, 128, 28), (60, 50, 384), (40, 40, 40), (33, 97, 64),
                                                 (150, 64, 70), (400, 390, 384), (960, 1280, 96), (30, 200, 48)])
def test_mask_resize_over_the_foreground_only_equals_pil_on_the_whole_image(height, width, size):
    """Masks of every shape and place (edges, single pixels, views of a larger array) resize bit-identically to
    PIL's bicubic resize of the whole 0/255 image, and the result is zero outside the window returned."""
    rng = np.random.default_rng(height * width + size)
    base = np.zeros((height + 10, width + 10), dtype=bool)
    for trial in range(30):
        base[:] = False
        mask = base[5 : 5 + height, 3 : 3 + width]  # a strided view of a larger array
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = int(rng.integers(x0 + 1, width + 1)), int(rng.integers(y0 + 1, height + 1))
        if trial % 4 == 0:
            mask[y0, x0] = True  # one pixel
        else:
            mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
            mask[y0, x0] = True
        expected = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BICUBIC))
        got, window = resize_mask(mask, mask_box(mask), size)
        assert np.array_equal(got, expected), trial
        outside = expected.copy()
        outside[window] = 0
        assert not outside.any()


def test_the_pass_order_is_observed_and_both_orders_occur():
    assert pass_order(960, 1280, 384, 384) in (HORIZONTAL_FIRST, VERTICAL_FIRST)
    assert {pass_order(150, 64, 70, 70), pass_order(89, 131, 70, 70)} <= {HORIZONTAL_FIRST, VERTICAL_FIRST}
    assert pass_order(70, 64, 70, 70) == HORIZONTAL_FIRST  # one pass only


def test_video_frame_rule():
    full = [np.ones((4, 4), bool)]
    empty = [np.zeros((4, 4), bool)]
    # 5 usable of 7 (frames 1 and 4 empty): uniform with repetition among 0, 2, 3, 5, 6
    masks = full + empty + full + full + empty + full + full
    assert select_video_frames(masks, 8) == [0, 0, 2, 2, 3, 5, 5, 6]
    # >= 8 usable: uniform over the usable ones, first and last included
    assert select_video_frames(full * 15, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert select_video_frames(full * 8, 8) == list(range(8))
    with pytest.raises(ValueError, match="no usable frame"):
        select_video_frames(empty * 3, 8)
