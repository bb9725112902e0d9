"""ls_io.rle against the reference codec (label_studio_sdk.converter.brush): byte-identical, lossless."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from ls_io.rle import RLEError, decode_rle, decode_values, encode_rle, encode_values


def random_masks(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        kind = i % 4
        if kind == 0:  # salt and pepper
            m = (rng.random((h, w)) < rng.random()) * 255
        elif kind == 1:  # blobs: long runs
            m = np.zeros((h, w))
            m[rng.integers(0, h) :, rng.integers(0, w) :] = 255
        elif kind == 2:  # several grey levels (brush values are not only 0/255 in the wild)
            m = rng.integers(0, 4, (h, w)) * 60
        else:  # stripes
            m = np.zeros((h, w))
            m[:, :: max(1, int(rng.integers(1, 5)))] = 255
        yield m.astype(np.uint8)


@pytest.mark.parametrize("seed", range(4))
def test_masks_byte_identical_to_sdk_and_lossless(seed):
    for mask in random_masks(60, seed):
        rle = encode_rle(mask)
        assert rle == brush.mask2rle(mask)
        assert np.array_equal(decode_rle(rle, *mask.shape), mask)
        assert np.array_equal(decode_rle(brush.mask2rle(mask), *mask.shape), mask)


# Pixel runs become 4x longer RGBA runs: 2 -> 8 (3-bit field edge), 4 -> 16, 64 -> 256, 16384 -> 65536 ...
EDGE_RUNS = [1, 2, 3, 4, 5, 8, 9, 16, 17, 63, 64, 65, 256, 257, 16383, 16384, 16385, 16400, 32768, 40000]


@pytest.mark.parametrize("run", EDGE_RUNS)
def test_edge_pixel_runs(run):
    mask = np.zeros((1, run + 3), dtype=np.uint8)
    mask[0, 1 : 1 + run] = 255
    assert encode_rle(mask) == brush.mask2rle(mask)
    assert np.array_equal(decode_rle(encode_rle(mask), 1, run + 3), mask)


@pytest.mark.parametrize("run", [1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 257, 65535, 65536, 65537, 131072, 131073, 200000])
def test_edge_value_runs(run):
    """Runs in the flat value stream: literal for 1, each field size boundary, the 65536 split."""
    values = np.zeros(run + 2, dtype=np.uint8)
    values[1 : 1 + run] = 7
    values[-1] = 9
    assert encode_values(values) == brush.encode_rle(values)
    assert np.array_equal(decode_values(encode_values(values)), values)
    assert np.array_equal(decode_values(brush.encode_rle(values)), brush.decode_rle(brush.encode_rle(values)))


def test_literal_runs_and_alignment_padding():
    rng = np.random.default_rng(3)
    for n in range(1, 40):  # every padding length, including the whole zero byte when already aligned
        values = rng.integers(0, 256, n).astype(np.uint8)
        assert encode_values(values) == brush.encode_rle(values)
        assert np.array_equal(decode_values(encode_values(values)), values)


def test_bool_mask_is_255_and_full_hd():
    mask = np.zeros((1080, 1920), dtype=bool)
    yy, xx = np.mgrid[:1080, :1920]
    mask[(yy - 540) ** 2 + (xx - 960) ** 2 < 300**2] = True
    rle = encode_rle(mask)
    assert rle == brush.mask2rle(mask.astype(np.uint8) * 255)
    assert set(np.unique(decode_rle(rle, 1080, 1920))) == {0, 255}


@pytest.mark.parametrize("bad", [[1, 2, 3], [0, 0, 0, 4, 57, 27, 0, 0], [0, 0, 48, 0, 57, 27, 300], [0.5] * 8, "abc"])
def test_malformed_rle_raises(bad):
    with pytest.raises(RLEError):
        decode_rle(bad, 4, 3)


def test_size_mismatch_and_truncation():
    rle = encode_rle(np.full((4, 3), 255, np.uint8))
    with pytest.raises(RLEError, match="needs"):
        decode_rle(rle, 5, 3)
    big = encode_rle((np.random.default_rng(0).random((20, 20)) > 0.5).astype(np.uint8) * 255)
    with pytest.raises(RLEError):
        decode_rle(big[: len(big) // 2], 20, 20)
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 2, 2)))
