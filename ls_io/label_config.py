"""Read what the backend needs from a Label Studio label config, by tag TYPE (never by hard-coded names).

An image project needs an <Image> and a per-region <TextArea perRegion="true">; regions come from
<BrushLabels>, <KeyPointLabels smart="true">, <RectangleLabels smart="true">. A video project needs a <Video>,
a <VideoRectangle> and a per-region <TextArea>.
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import LabelConfigError

__all__ = ["Control", "LabelConfigError", "ObjectTag", "ParsedConfig", "parse_label_config"]


@dataclass(frozen=True)
class Control:
    """A control tag: its `name` (from_name in results), `to_name`, tag type and label values."""

    tag: str
    name: str
    to_name: str
    labels: tuple[str, ...] = ()
    smart: bool = False


# <Video frameRate> when absent: the editor's default (tags/object/Video: framerate "24").
DEFAULT_VIDEO_FRAME_RATE = 24.0


@dataclass(frozen=True)
class ObjectTag:
    """The <Image> or <Video>: `name` (to_name in results), `value_key` (task.data key, "$image" -> "image") and,
    for a video, the raw `frameRate` attribute (a number or "$key" of task.data)."""

    tag: str
    name: str
    value_key: str
    frame_rate: str = ""

    def video_frame_rate(self, data: dict | None = None) -> float:
        """The frames per second the editor numbers this video's frames with (its timeline); a "$key" rate is
        read from the task's data; a missing or unusable one gives 24, the editor's default."""
        raw = self.frame_rate.strip()
        if raw.startswith("$"):
            raw = str((data or {}).get(raw[1:], ""))
        try:
            rate = float(raw)
        except ValueError:
            return DEFAULT_VIDEO_FRAME_RATE
        return rate if 0 < rate < 1000 else DEFAULT_VIDEO_FRAME_RATE


@dataclass(frozen=True)
class ParsedConfig:
    obj: ObjectTag
    textarea: Control
    brush: Control | None = None
    keypoint: Control | None = None
    rectangle: Control | None = None
    video_rectangle: Control | None = None
    video_labels: Control | None = None
    controls: tuple[Control, ...] = field(default_factory=tuple)

    @property
    def is_video(self) -> bool:
        return self.obj.tag == "video"

    def control_by_name(self, name: str) -> Control | None:
        for c in self.controls:
            if c.name == name:
                return c
        return None


_OBJECTS = {"image", "video"}
_CONTROLS = {"brushlabels", "keypointlabels", "rectanglelabels", "videorectangle", "textarea", "labels", "brush"}


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in {"true", "1", "yes"}


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> ParsedConfig:
    """Parse `xml` (a Label Studio label config); LabelConfigError says what is missing or broken."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    objects: list[ObjectTag] = []
    controls: list[Control] = []
    for el in root.iter():
        tag = el.tag.lower() if isinstance(el.tag, str) else ""
        if tag in _OBJECTS:
            name, value = el.get("name"), el.get("value") or el.get("valueList") or ""
            if not name:
                raise LabelConfigError(f"<{el.tag}> has no name attribute")
            # attribute names are case-insensitive in Label Studio configs (frameRate, framerate)
            rate = next((v for k, v in el.attrib.items() if k.lower() == "framerate"), "")
            objects.append(ObjectTag(tag, name, value.lstrip("$"), rate))
        elif tag in _CONTROLS:
            name, to_name = el.get("name"), el.get("toName")
            if not name or not to_name:
                raise LabelConfigError(f"<{el.tag}> needs name and toName attributes")
            labels = tuple(c.get("value") for c in el if isinstance(c.tag, str) and c.tag.lower() == "label" and c.get("value"))
            if tag == "textarea" and not _truthy(el.get("perRegion")):
                continue  # a per-task TextArea is not ours to fill
            controls.append(Control(tag, name, to_name.split(",")[0].strip(), labels, _truthy(el.get("smart"))))
    if not objects:
        raise LabelConfigError("label config has no <Image> or <Video> object tag")
    obj = objects[0]
    mine = [c for c in controls if c.to_name == obj.name]

    def first(tag: str) -> Control | None:
        return next((c for c in mine if c.tag == tag), None)

    textarea = first("textarea")
    if textarea is None:
        raise LabelConfigError(
            f'label config has no per-region <TextArea perRegion="true" toName="{obj.name}"> to hold captions'
        )
    if obj.tag == "video":
        video_rect = first("videorectangle")
        if video_rect is None:
            raise LabelConfigError(f'video label config has no <VideoRectangle toName="{obj.name}">')
        return ParsedConfig(obj, textarea, video_rectangle=video_rect, video_labels=first("labels"), controls=tuple(mine))
    brush = first("brushlabels") or first("brush")
    keypoint, rectangle = first("keypointlabels"), first("rectanglelabels")
    if brush is None and rectangle is None and keypoint is None:
        raise LabelConfigError(
            f'image label config has no <BrushLabels>, <KeyPointLabels> or <RectangleLabels> on "{obj.name}"'
        )
    return ParsedConfig(obj, textarea, brush=brush, keypoint=keypoint, rectangle=rectangle, controls=tuple(mine))
