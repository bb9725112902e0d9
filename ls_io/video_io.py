"""The one PyAV layer: decode a video, probe it, read selected frames, encode a lossless video.

Frames are HxWx3 uint8 RGB arrays of the first video stream, indexed 0-based in decode order (Label Studio's
frame f is index f - 1 here), or laid on Label Studio's timeline at the label config's frame rate
(`decode_video(frame_rate=...)`: what the editor numbers, also for variable-frame-rate files). `av` is imported inside each function on purpose: PyAV is an optional, heavy
dependency that only video work needs.
"""
from __future__ import annotations

import bisect
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import MediaUndecodable, PayloadTooLarge, StatusError, Unprocessable
from .media import MediaConfig

MAX_FRAMES = 3000
DEFAULT_MAX_PIXELS = MediaConfig.media_max_pixels  # per frame, as for images
LOSSLESS_FRAME_RATE = 25


def decode_video(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int = MAX_FRAMES,
                 frame_rate: float | None = None) -> list[np.ndarray]:
    """All frames of a video file (first stream), at most `max_frames`; PayloadTooLarge over either limit,
    MediaUndecodable when the container, the codec or the bytes cannot be decoded.

    `frame_rate` None: frames in decode order. Given (the <Video frameRate> of the label config): frames laid on
    Label Studio's timeline, where frame f (index f - 1) is what a player shows at time (f - 1) / frame_rate, i.e.
    the last frame presented at or before it. A variable-frame-rate file (phone video) then lines up with the
    editor's frame numbers; a constant-rate file at `frame_rate` gives its decode order unchanged.
    """
    import av  # deferred: optional, heavy

    frames: list[np.ndarray] = []
    times: list[float | None] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaUndecodable("video could not be decoded: the file has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # FFmpeg knows no decoder for this codec
                raise MediaUndecodable("video could not be decoded: no decoder for its codec")
            if stream.width * stream.height > max_pixels:
                raise PayloadTooLarge(f"video is {stream.width}x{stream.height}, over the {max_pixels} pixel limit")
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time)
                if len(frames) > max_frames:
                    raise PayloadTooLarge(f"video has more than {max_frames} frames")
    except StatusError:
        raise
    except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
        raise MediaUndecodable(f"video could not be decoded: {type(exc).__name__}") from None
    if frame_rate is None or not frames or any(t is None for t in times):
        return frames
    return _on_timeline(frames, [float(t) for t in times], float(frame_rate), max_frames)


def _on_timeline(frames: list[np.ndarray], times: list[float], frame_rate: float, max_frames: int) -> list[np.ndarray]:
    """Frames resampled at `frame_rate` from time 0 (the first frame's time) to the last frame's time."""
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate}")
    start = times[0]
    shown_at = [t - start for t in times]
    count = int(np.floor(shown_at[-1] * frame_rate + 1e-6)) + 1
    if count > max_frames:
        raise PayloadTooLarge(f"video has more than {max_frames} frames at {frame_rate:g} frames per second")
    # 1 us of slack: container time bases round a constant rate's times (1/25 s in a 1/1000 time base).
    return [frames[max(0, bisect.bisect_right(shown_at, i / frame_rate + 1e-6) - 1)] for i in range(count)]


@dataclass
class VideoInfo:
    """A video file: its path, sha256 of its bytes, decoded frame count and frame size."""

    path: Path
    digest: str
    num_frames: int
    height: int
    width: int


def probe_video(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Hash the file and count the frames of its first video stream (packets: no decoding; decoding when the
    container gives none). Unprocessable without a video stream or frames; PayloadTooLarge over `max_pixels`."""
    import av  # deferred: optional, heavy

    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise Unprocessable(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.width), int(stream.height)
        if width * height > max_pixels:
            raise PayloadTooLarge(f"video is {width}x{height}, over the {max_pixels} pixel limit")
        count = sum(1 for packet in container.demux(stream) if packet.size)
    if count == 0:
        with av.open(str(path)) as container:
            count = sum(1 for _ in container.decode(video=0))
    if count == 0:
        raise Unprocessable(f"{path.name} has no frames")
    return VideoInfo(path, digest.hexdigest(), count, height, width)


def read_video_frames(path: str | Path, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """{0-based decoded frame index: frame} for the wanted indices (decodes up to the last one wanted)."""
    import av  # deferred: optional, heavy

    wanted = {int(i) for i in indices}
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    missing = sorted(wanted - set(out))
    if missing:
        raise Unprocessable(f"video decoded to fewer frames than counted: frames {missing[:5]} missing")
    return out


def video_bytes(frames: np.ndarray, rate: int = LOSSLESS_FRAME_RATE) -> bytes:
    """A lossless video file (FFV1, bgr0, in Matroska) of uint8 TxHxWx3 RGB frames.

    Decoding it (decode_video, read_video_frames) gives back exactly these frames, one decoded frame per input
    frame. Muxed bit-exact, so the same frames give the same bytes (no random segment id, no encoder version
    string). Callers put it on disk with dam_model.fileio.atomic_write_bytes, the one atomic writer (ls_io does not
    depend on dam_model).
    """
    import av  # deferred: optional, heavy

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 TxHxWx3 with T >= 1, got {frames.dtype} {frames.shape}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()
