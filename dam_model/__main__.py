"""Command line: `python -m dam_model <command> ...`; `python -m dam_model --help` lists the commands.

Commands live in COMMANDS: name -> (add_arguments(parser), run(args) -> exit code). Adding one is one line;
`lazy(module, add, run)` defers heavy imports until the command is actually used.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def lazy(module: str, add_name: str, run_name: str) -> tuple[AddArguments, Run]:
    """(add_arguments, run) pair that imports `module` only when called."""

    def add(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), add_name)(parser)

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), run_name)(args)

    return add, run


# -- describe ------------------------------------------------------------------------------------------------------
def add_describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint folder in the official DAM layout, or a hub id 'org/name' (downloaded "
                             "with huggingface_hub only when no such local folder exists)")
    parser.add_argument("--image", help="image file to describe (use with --mask)")
    parser.add_argument("--mask", nargs="+", metavar="MASK.png",
                        help="one or more region masks for --image (pixel > 0 = region); one caption per mask")
    parser.add_argument("--video", metavar="FILE_OR_FRAMES", nargs="+",
                        help="a video file (decoded with PyAV), a folder of frame images (sorted by name), or a "
                             "list of frame images")
    parser.add_argument("--masks", nargs="+", metavar="MASK",
                        help="with --video: one mask per frame, as a folder (sorted by name) or a list of files; "
                             "frames with an empty mask are skipped and 8 frames are sampled uniformly among the "
                             "rest (repeating frames when fewer than 8 are usable)")
    parser.add_argument("--query", default=None,
                        help="user turn with <image> placeholder(s); default: the checkpoint's image or video query")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="token budget per caption (release: 512)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (deterministic, default); the release samples with 0.2")
    parser.add_argument("--top-p", type=float, default=0.5, help="nucleus mass when sampling (release: 0.5)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible captions)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--no-stream", action="store_true", help="print whole captions instead of streaming them")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per caption (text, confidence, token_ids); implies --no-stream")


def _list_files(entries: Sequence[str], what: str) -> list[Path]:
    paths: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise ValueError(f"{what} {entry} does not exist")
    if not paths:
        raise ValueError(f"no {what} found in {list(entries)}")
    return paths


def read_video_frames(entries: Sequence[str]) -> list:
    """Frames (HxWx3 uint8) from a video file, a folder of images or a list of images."""
    import numpy as np
    from PIL import Image

    if len(entries) == 1 and Path(entries[0]).is_file() and Path(entries[0]).suffix.lower() not in IMAGE_SUFFIXES:
        import av

        with av.open(entries[0]) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return [np.asarray(Image.open(p).convert("RGB")) for p in _list_files(entries, "frame")]


def _read_mask(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 0


def run_describe(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .modeling import DescribeAnythingModel

    if bool(args.image) == bool(args.video):
        raise ValueError("give either --image with --mask, or --video with --masks")
    model = DescribeAnythingModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    gen = dict(query=args.query, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
               top_p=args.top_p, seed=args.seed)
    stream = not (args.no_stream or args.json)
    if args.image:
        if not args.mask:
            raise ValueError("--image needs at least one --mask")
        image = np.asarray(Image.open(args.image).convert("RGB"))
        masks = [_read_mask(Path(m)) for m in args.mask]
        if stream:
            for mask in masks:
                for delta in model.stream(image, mask, **gen):
                    print(delta, end="", flush=True)
                print()
            return 0
        for caption in model.describe(image, masks, **gen):
            _print_caption(caption, args.json)
        return 0
    if not args.masks:
        raise ValueError("--video needs --masks (one per frame)")
    frames = read_video_frames(args.video)
    masks = [_read_mask(p) for p in _list_files(args.masks, "mask")]
    if len(masks) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(masks)} masks: give one mask per frame")
    if stream:
        for delta in model.describe_video(frames, masks, stream=True, **gen):
            print(delta, end="", flush=True)
        print()
        return 0
    _print_caption(model.describe_video(frames, masks, **gen), args.json)
    return 0


def _print_caption(caption, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"text": caption.text, "confidence": caption.confidence, "token_ids": caption.token_ids}))
    else:
        print(caption.text)


COMMANDS: dict[str, tuple[AddArguments, Run]] = {
    "describe": (add_describe_arguments, run_describe),
    "evaluate": lazy("dam_model.evaluation", "add_evaluate_arguments", "run_evaluate"),
    "train": lazy("dam_model.train.cli", "add_train_command_args", "run_train_command"),
}

HELP = {
    "describe": "caption masked regions of an image (or an object across video frames), streaming the text",
    "evaluate": "score captions with DLC-style judges and caption metrics",
    "train": "fine-tune a DAM on image regions and video tracks (dam_model.data rows)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dam_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _) in COMMANDS.items():
        help_text = HELP.get(name, name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        try:
            add_arguments(command_parser)
        except ImportError as error:  # a broken optional command must not hide the others
            command_parser.description = f"{help_text} (unavailable: {error})"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command][1](args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
