"""Label Studio brush RLE (thi.ng rle-pack), vectorised with numpy.

Label Studio stores a brush mask as the RGBA image flattened row-major (every pixel value repeated 4 times),
packed into an MSB-first bitstream:

    32 bits  num (= H * W * 4)
     5 bits  word size - 1 (7: 8-bit values)
    4x4 bits run-length field sizes - 1 (sizes [3, 4, 8, 16])
    chunks:  1 flag bit (1 = repeat run, 0 = literal run), 2 bits size index, length - 1 in that many bits,
             then one value (repeat) or `length` values (literal)
    zero padding to a byte (a whole zero byte when already aligned, as the reference encoder does)

`encode_rle` is byte-identical to `label_studio_sdk.converter.brush.mask2rle` (the reference): a run of
one value is a literal chunk, longer runs are repeat chunks with the smallest field that fits, and runs
longer than 65536 are split into 65536-long chunks followed by the remainder in a 16-bit chunk.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import RLEError

__all__ = ["encode_rle", "decode_rle", "encode_values", "decode_values", "RLEError"]

_WORD_BITS = 8
_SIZES = (3, 4, 8, 16)
_HEADER_BITS = 32 + 5 + 16
_MAX_CHUNK = 1 << 16


def _mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """Bool masks become 0/255 (Label Studio draws the alpha channel: a 0/1 mask is invisible)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.view(np.uint8) * np.uint8(255)
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask values must lie in 0..255")
        return mask.astype(np.uint8)
    return mask


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run starts and values of a 1-D uint8 array (one pass of comparisons, no Python loop)."""
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.empty(change.size + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = change
    return starts, flat[starts]


def _pack_chunks(lengths: np.ndarray, values: np.ndarray, num: int) -> list[int]:
    """Bitstream of runs (lengths >= 1, values 0..255) exactly as the reference encoder writes it."""
    lengths = lengths.astype(np.int64, copy=False)
    # Runs over 65536 become k full 65536-chunks plus the remainder (which keeps the 16-bit field).
    extra = np.where(lengths > _MAX_CHUNK, (lengths - 1) // _MAX_CHUNK, 0)
    if extra.any():
        reps = extra + 1
        last = np.cumsum(reps) - 1
        chunk_len = np.full(int(reps.sum()), _MAX_CHUNK, dtype=np.int64)
        chunk_len[last] = lengths - extra * _MAX_CHUNK
        chunk_val = np.repeat(values, reps)
        chunk_idx = np.full(chunk_len.size, 3, dtype=np.int64)
        chunk_idx[last] = np.searchsorted(np.array([8, 16, 256]), lengths, side="left")
    else:
        chunk_len, chunk_val = lengths, values
        chunk_idx = np.searchsorted(np.array([8, 16, 256]), lengths, side="left")
    size_bits = np.array(_SIZES, dtype=np.int64)[chunk_idx]
    flag = (chunk_len > 1) | (chunk_idx == 3)  # a 16-bit remainder of 1 is still a repeat chunk
    # One integer per chunk: flag | idx | length-1 | value, at most 27 bits wide.
    width = 3 + size_bits + _WORD_BITS
    code = (
        (flag.astype(np.int64) << (width - 1))
        | (chunk_idx << (width - 3))
        | ((chunk_len - 1) << _WORD_BITS)
        | chunk_val.astype(np.int64)
    )
    header = (num << 21) | ((_WORD_BITS - 1) << 16) | 0x237F  # sizes-1 = 2, 3, 7, 15
    bits = np.unpackbits(code.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)  # [n, 32]
    keep = np.arange(32)[None, :] >= (32 - width)[:, None]
    header_bits = np.unpackbits(np.array([header], dtype=">u8").view(np.uint8))[64 - _HEADER_BITS :]
    stream = np.concatenate([header_bits, bits[keep]])
    pad = 8 - stream.size % 8  # 1..8, like the reference (a full zero byte when aligned)
    stream = np.concatenate([stream, np.zeros(pad, dtype=np.uint8)])
    return np.packbits(stream).tolist()


def encode_values(values: np.ndarray | Sequence[int]) -> list[int]:
    """RLE of a flat array of 8-bit values (0..255), byte-identical to the reference `encode_rle`."""
    flat = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    if flat.size == 0:
        raise ValueError("cannot encode an empty array")
    starts, vals = _runs(flat)
    lengths = np.diff(np.append(starts, flat.size))
    return _pack_chunks(lengths, vals, flat.size)


def encode_rle(mask: np.ndarray) -> list[int]:
    """Brush RLE of an H x W mask (bool -> 0/255, or uint8 values), as Label Studio's `value.rle` list.

    Byte-identical to `label_studio_sdk.converter.brush.mask2rle(mask)`. Runs are found on pixels and
    scaled by 4 (RGBA), so the 4x expanded array is never built.
    """
    flat = np.ascontiguousarray(_mask_to_uint8(mask)).ravel()
    if flat.size == 0:
        raise ValueError("cannot encode an empty mask")
    starts, vals = _runs(flat)
    lengths = np.diff(np.append(starts, flat.size)) * 4
    return _pack_chunks(lengths, vals, flat.size * 4)


def _as_bytes(rle: Sequence[int] | np.ndarray) -> np.ndarray:
    """The RLE as a uint8 array; RLEError unless it is a flat list of byte values."""
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1 or not np.issubdtype(rle.dtype, np.integer):
            raise RLEError("RLE must be a flat list of integers")
        if rle.size and (rle.min() < 0 or rle.max() > 255):
            raise RLEError("RLE values must be bytes (0..255)")
        buf = rle.astype(np.uint8)
    else:
        try:
            buf = np.frombuffer(bytes(rle), dtype=np.uint8)  # bytes() checks 0..255 and int-ness fast
        except (TypeError, ValueError):
            raise RLEError("RLE must be a flat list of integers in 0..255") from None
    if buf.size < 7:
        raise RLEError("RLE is too short to hold its header")
    return buf


def _parse(rle: Sequence[int] | np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Parse a stream into (num, run_lengths, run_values) with literal runs expanded to length-1 runs."""
    buf = _as_bytes(rle)
    nbits = buf.size * 8
    num = int.from_bytes(buf[:4].tobytes(), "big")
    head = int.from_bytes(buf[4:7].tobytes(), "big") >> 3  # 21 bits: word size and four sizes
    word = ((head >> 16) & 0x1F) + 1
    sizes = np.array([((head >> s) & 0xF) + 1 for s in (12, 8, 4, 0)], dtype=np.int64)
    if word != _WORD_BITS:
        raise RLEError(f"unsupported RLE word size {word} (brush masks use 8)")
    # 32-bit big-endian windows starting at every byte: the 24 bits at any bit position are two shifts away.
    padded = np.concatenate([buf, np.zeros(4, dtype=np.uint8)])
    win32 = np.lib.stride_tricks.sliding_window_view(padded, 4)[: buf.size + 1].copy().view(">u4").ravel()
    win32 = win32.astype(np.uint32)

    def top24(at: np.ndarray) -> np.ndarray:
        """The 24 bits starting at each bit position `at` (uint32 arithmetic: half the memory traffic of int64)."""
        if at.dtype != np.uint32:
            at = at.astype(np.uint32)
        return (win32[at >> np.uint32(3)] << (at & np.uint32(7))) >> np.uint32(8)

    # Every chunk is at least 12 bits and the padding at most 8, so chunks start before nbits - 12.
    stop = nbits - 12
    pos = np.arange(_HEADER_BITS, max(stop, _HEADER_BITS), dtype=np.uint32)
    head_bits = top24(pos)
    size_idx = (head_bits >> np.uint32(21)) & np.uint32(3)
    sb_tab = sizes.astype(np.uint32)
    shift_tab = (21 - sizes).astype(np.uint32)
    mask_tab = ((1 << sizes) - 1).astype(np.uint32)
    field_len = (head_bits >> shift_tab[size_idx]) & mask_tab[size_idx]  # length - 1
    # repeat chunk: 3 + sb + 8 bits; literal chunk: 3 + sb + 8 * length bits
    step = np.where(head_bits >= np.uint32(1 << 23), (11 + sizes).astype(np.uint32)[size_idx],
                    (11 + sizes).astype(np.uint32)[size_idx] + (field_len << np.uint32(3)))
    step += pos
    step -= np.uint32(_HEADER_BITS)
    hop = memoryview(step)  # next chunk's offset for a chunk at each offset; followed in Python (~50 ns a chunk)
    starts: list[int] = []
    i, last = 0, stop - _HEADER_BITS
    while i < last:
        starts.append(i)
        i = hop[i]
    idx = np.asarray(starts, dtype=np.int64)
    if idx.size == 0:
        raise RLEError("RLE holds no runs")
    end_bit = int(step[idx[-1]]) + _HEADER_BITS
    if end_bit > nbits:
        raise RLEError("RLE stream is truncated")
    c_flag = head_bits[idx] >> np.uint32(23)
    c_len = field_len[idx].astype(np.int64) + 1
    c_pos = pos[idx].astype(np.int64)
    value_pos = c_pos + 3 + sb_tab[size_idx[idx]].astype(np.int64)
    total = int(c_len.sum())
    if total != num:
        raise RLEError(f"RLE runs hold {total} values but the header declares {num}")
    lit = c_flag == 0
    if not lit.any():
        return num, c_len, (top24(value_pos) >> np.uint32(16)).astype(np.int64)
    # Literal chunks: one length-1 run per value.
    per_chunk = np.where(lit, c_len, 1)
    offsets = np.arange(int(per_chunk.sum())) - np.repeat(np.cumsum(per_chunk) - per_chunk, per_chunk)
    run_pos = np.repeat(value_pos, per_chunk) + offsets * _WORD_BITS
    run_len = np.where(np.repeat(lit, per_chunk), 1, np.repeat(c_len, per_chunk))
    return num, run_len, (top24(run_pos) >> np.uint32(16)).astype(np.int64)


def decode_values(rle: Sequence[int] | np.ndarray) -> np.ndarray:
    """Decode a stream to its flat uint8 values (length `num`), like the reference `decode_rle`."""
    _, lengths, values = _parse(rle)
    return np.repeat(values.astype(np.uint8), lengths)


def decode_rle(rle: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode a brush RLE to its H x W uint8 alpha channel (0..255; 255 = drawn).

    Raises RLEError (a ValueError) when the stream is malformed or its length is not height * width * 4.
    """
    if height <= 0 or width <= 0:
        raise RLEError(f"invalid image size {width}x{height}")
    num, lengths, values = _parse(rle)
    if num != height * width * 4:
        raise RLEError(f"RLE holds {num} values but a {width}x{height} RGBA mask needs {height * width * 4}")
    # Alpha of pixel i is value index 4i+3: the pixels of a run [s, e) are ceil((s-3)/4) .. ceil((e-3)/4).
    ends = np.cumsum(lengths)
    pix_end = ends // 4  # == ceil((e - 3) / 4) for e >= 0
    counts = np.diff(pix_end, prepend=0)
    out = np.repeat(values.astype(np.uint8), counts)
    return out.reshape(height, width)
