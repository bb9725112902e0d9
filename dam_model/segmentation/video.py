"""SAM 2 video masklets from prompts on any frame, tracked forward and backward, for several objects.

sam2's own `init_state` wants a folder of JPEGs or an mp4 and converts every frame to float32 at once
(12 MiB per frame at 1024 px). Here frames are decoded once (PyAV), resized to the model input size
and kept as uint8 on the CPU (3 MiB per frame at 1024 px); each is normalised only when the model
visits it. The tracking state keeps only the memory window sam2 can read, so a long clip costs
O(frames) for pixels and output masks, and O(window) for model state per object.

Propagation order per object o with earliest prompt frame p(o):
  forward pass  frames p(o), p(o)+1, ..., T-1 (later prompt frames of o are conditioning frames on the way);
  backward pass frames p(o)-1, ..., 0.
Every (frame, object) pair is computed once; each frame's image features once per pass.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from .types import VideoPrompt, as_rgb_uint8, validate_prompts

if TYPE_CHECKING:
    import torch


class Sam2Parts(Protocol):
    """What track_video reads from a SAM 2 segmenter (Sam2Segmenter has all three): the SAM2VideoPredictor, its
    square input size S, and the autocast context of its dtype. Typed here so this module needs no segmenter."""

    @property
    def model(self) -> Any: ...

    @property
    def image_size(self) -> int: ...

    def autocast(self) -> contextlib.AbstractContextManager: ...


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class FrameStore:
    """Frames resized to S x S, kept as uint8 [T, 3, S, S] on the CPU; indexing returns the normalised
    float32 [3, S, S] tensor sam2 expects (what its `inference_state["images"]` holds)."""

    def __init__(self, pixels: "torch.Tensor", height: int, width: int) -> None:
        import torch  # deferred: heavy, loaded only when a clip is tracked (the package imports without it)

        self.pixels = pixels
        self.height = int(height)
        self.width = int(width)
        self._mean = torch.tensor(_IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(_IMAGENET_STD, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def __getitem__(self, index: int) -> "torch.Tensor":
        return (self.pixels[index].float() / 255.0 - self._mean) / self._std

    @property
    def nbytes(self) -> int:
        return int(self.pixels.numel())


def _too_many(count: int, stride: int, max_frames: int) -> ValueError:
    return ValueError(
        f"clip has {count} frames at stride {stride} but max_frames={max_frames}; "
        f"pass stride >= {math.ceil(count * stride / max_frames)} or trim the clip"
    )


def _resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    # bicubic PIL resize, as sam2's own video frame loader does
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))


def load_frames(source: Any, image_size: int, max_frames: int = 300, stride: int = 1) -> FrameStore:
    """Decode and resize a clip.

    source: a path to a video file (mp4/webm/... through PyAV), a sequence of HxWx3 uint8 frames,
            or a [T, H, W, 3] uint8 array. Every frame must have the same size.
    stride: keep every `stride`-th frame (0, stride, 2*stride, ...); prompt frame indices then refer to
            the kept frames. More than `max_frames` kept frames -> ValueError naming the stride that fits.
    """
    import torch  # deferred: heavy (see FrameStore)

    if stride < 1 or max_frames < 1:
        raise ValueError(f"stride and max_frames must be >= 1, got {stride} and {max_frames}")
    resized: list[np.ndarray] = []
    height = width = None
    if isinstance(source, (str, Path)):
        import av  # deferred: optional and heavy, only for clips given as files

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if stream.frames and math.ceil(stream.frames / stride) > max_frames:
                raise _too_many(math.ceil(stream.frames / stride), stride, max_frames)
            for index, frame in enumerate(container.decode(stream)):
                if index % stride:
                    continue
                if len(resized) >= max_frames:  # header frame counts can be missing or wrong
                    raise _too_many(len(resized) + 1, stride, max_frames)
                rgb = frame.to_ndarray(format="rgb24")
                height, width = rgb.shape[:2]
                resized.append(_resize_uint8(rgb, image_size))
    else:
        frames = list(source) if not isinstance(source, np.ndarray) else [source[i] for i in range(len(source))]
        kept = frames[::stride]
        if len(kept) > max_frames:
            raise _too_many(len(kept), stride, max_frames)
        for index, frame in enumerate(kept):
            rgb = as_rgb_uint8(frame)
            if height is None:
                height, width = rgb.shape[:2]
            elif rgb.shape[:2] != (height, width):
                raise ValueError(f"frame {index * stride} is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
            resized.append(_resize_uint8(rgb, image_size))
    if not resized:
        raise ValueError("the clip has no frames")
    pixels = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()
    return FrameStore(pixels, height, width)


@dataclass(frozen=True)
class _ObjectPrompt:
    points: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    box: Optional[np.ndarray]


def _merge_prompts(
    prompts: Sequence["VideoPrompt | dict[str, Any]"], num_frames: int, height: int, width: int
) -> "OrderedDict[tuple[Hashable, int], _ObjectPrompt]":
    """Validate prompts and merge those on the same (object, frame): clicks are concatenated, one box at most."""
    if not prompts:
        raise ValueError("give at least one video prompt")
    merged: "OrderedDict[tuple[Hashable, int], _ObjectPrompt]" = OrderedDict()
    for raw in prompts:
        prompt = VideoPrompt.coerce(raw)
        if not 0 <= prompt.frame_index < num_frames:
            raise ValueError(f"prompt frame {prompt.frame_index} is outside the clip's {num_frames} frames")
        pts, lbl, bx = validate_prompts(height, width, prompt.points, prompt.labels, prompt.box)
        key = (prompt.obj_id, prompt.frame_index)
        if key in merged:
            old = merged[key]
            if old.box is not None and bx is not None:
                raise ValueError(f"object {prompt.obj_id!r} has two boxes on frame {prompt.frame_index}")
            if old.points is not None and pts is not None:
                pts, lbl = np.concatenate([old.points, pts]), np.concatenate([old.labels, lbl])
            elif pts is None:
                pts, lbl = old.points, old.labels
            bx = bx if bx is not None else old.box
        merged[key] = _ObjectPrompt(pts, lbl, bx)
    return merged


def _new_inference_state(model: Any, frames: FrameStore, offload_state_to_cpu: bool) -> dict[str, Any]:
    """The dict SAM2VideoPredictor.init_state builds (sam2 1.1.0 layout), over in-memory frames."""
    import torch  # deferred: heavy (see FrameStore)

    device = model.device
    return {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": True,
        "offload_state_to_cpu": offload_state_to_cpu,
        "video_height": frames.height,
        "video_width": frames.width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def track_video(
    segmenter: Sam2Parts,
    frames: Any,
    prompts: Sequence["VideoPrompt | dict[str, Any]"],
    max_frames: int = 300,
    stride: int = 1,
    offload_state_to_cpu: bool = True,
    time_budget_s: Optional[float] = None,
    on_frame: Optional[Callable[[int, Hashable, str], None]] = None,
) -> dict[Hashable, list[np.ndarray]]:
    """Track every prompted object through the clip.

    frames:   video path or frames (see `load_frames`; `max_frames` and `stride` bound memory and time).
    prompts:  VideoPrompt (or dicts with frame_index, obj_id, points, labels, box) on any frames, in pixels
              of the original frames; several per object and several objects are allowed.
    offload_state_to_cpu: keep memory features and masks on the CPU (saves GPU memory, costs a little speed).
    time_budget_s: raise TimeoutError when tracking takes longer than this.
    on_frame: called as on_frame(frame_index, obj_id, "forward" | "backward") after each (frame, object) step.
    Returns {obj_id: [bool [H, W] per frame]} at the original resolution, one mask for every frame.
    """
    import torch  # deferred: heavy (see FrameStore)
    import torch.nn.functional as F  # deferred with torch

    model = segmenter.model
    store = load_frames(frames, segmenter.image_size, max_frames=max_frames, stride=stride)
    num_frames, height, width = len(store), store.height, store.width
    merged = _merge_prompts(prompts, num_frames, height, width)
    state = _new_inference_state(model, store, offload_state_to_cpu)
    deadline = None if time_budget_s is None else time.monotonic() + float(time_budget_s)

    with torch.inference_mode(), segmenter.autocast():
        for (obj_id, frame_index), prompt in merged.items():
            model.add_new_points_or_box(
                state,
                frame_idx=frame_index,
                obj_id=obj_id,
                points=prompt.points,
                labels=prompt.labels,
                box=prompt.box,
                clear_old_points=True,
                normalize_coords=True,
            )
        model.propagate_in_video_preflight(state)  # encodes the prompt frames' masks into memory

        obj_ids = list(state["obj_ids"])
        first_prompt = {
            idx: min(state["output_dict_per_obj"][idx]["cond_frame_outputs"]) for idx in range(len(obj_ids))
        }
        # frames sam2 can still read: num_maskmem memories (stride r) and max_obj_ptrs_in_encoder pointers
        window = max(model.num_maskmem * model.memory_temporal_stride_for_eval, model.max_obj_ptrs_in_encoder) + 1
        masks: dict[Hashable, list[Optional[np.ndarray]]] = {obj_id: [None] * num_frames for obj_id in obj_ids}
        steps = 0

        def step(frame_index: int, obj_idx: int, reverse: bool) -> None:
            nonlocal steps
            outputs = state["output_dict_per_obj"][obj_idx]
            if frame_index in outputs["cond_frame_outputs"]:
                pred_masks = outputs["cond_frame_outputs"][frame_index]["pred_masks"]
            else:
                current, pred_masks = model._run_single_frame_inference(
                    inference_state=state,
                    output_dict=outputs,
                    frame_idx=frame_index,
                    batch_size=1,
                    is_init_cond_frame=False,
                    point_inputs=None,
                    mask_inputs=None,
                    reverse=reverse,
                    run_mem_encoder=True,
                )
                current["pred_masks"] = None  # only memory features and pointers are read later
                outputs["non_cond_frame_outputs"][frame_index] = current
                _forget_outside_window(outputs, frame_index, reverse, window, first_prompt[obj_idx])
            state["frames_tracked_per_obj"][obj_idx][frame_index] = {"reverse": reverse}
            full = F.interpolate(
                pred_masks.to(model.device).float(), size=(height, width), mode="bilinear", align_corners=False
            )
            masks[obj_ids[obj_idx]][frame_index] = (full[0, 0] > 0).cpu().numpy()
            steps += 1
            if on_frame is not None:
                on_frame(frame_index, obj_ids[obj_idx], "backward" if reverse else "forward")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"video tracking exceeded {time_budget_s} s after {steps} frame-object steps")

        for frame_index in range(min(first_prompt.values()), num_frames):
            for obj_idx in range(len(obj_ids)):
                if frame_index >= first_prompt[obj_idx]:
                    step(frame_index, obj_idx, reverse=False)
        for frame_index in range(max(first_prompt.values()) - 1, -1, -1):
            for obj_idx in range(len(obj_ids)):
                if frame_index < first_prompt[obj_idx]:
                    step(frame_index, obj_idx, reverse=True)

    missing = [(obj_id, t) for obj_id, per_frame in masks.items() for t, m in enumerate(per_frame) if m is None]
    if missing:  # would be a bug in the loops above, never a user error
        raise RuntimeError(f"frames left untracked: {missing[:5]}")
    return masks  # type: ignore[return-value]


def _forget_outside_window(outputs: dict, frame_index: int, reverse: bool, window: int, first_prompt: int) -> None:
    """Drop the non-conditioning output that fell out of sam2's memory window behind the tracking front.

    Outputs within `window` after the object's first prompt frame are kept: the backward pass starts
    there and reads them as its first memories.
    """
    stale = frame_index + window if reverse else frame_index - window
    if not reverse and first_prompt < stale < first_prompt + window:
        return
    outputs["non_cond_frame_outputs"].pop(stale, None)
