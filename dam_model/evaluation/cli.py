"""``python -m dam_model evaluate``: caption held-out synthetic scenes (or read captions) and print the report."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Sequence

from dam_model.fileio import write_jsonl
from dam_model.synthetic import Scene, generate_dataset

from .captioning import caption_scenes, read_caption_file
from .chat_judge import ChatJudge
from .questions import Judge
from .rule_judge import RuleJudge
from .scoring import evaluate_captions, format_report


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m dam_model evaluate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="DAM folder to caption the held-out scenes with")
    source.add_argument("--captions", help="JSONL of captions made elsewhere: {caption, attributes} or "
                                           "{caption, seed, index, object_id} per line")
    parser.add_argument("--seed", type=int, default=1_000_003, help="seed of the held-out synthetic scenes")
    parser.add_argument("--n", type=int, default=50, help="number of held-out scenes")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of every scene (default: drawn per scene)")
    parser.add_argument("--reference", choices=("long", "short"), default="long",
                        help="reference captions for the BLEU/ROUGE/CIDEr/edit metrics")
    parser.add_argument("--judge", choices=("rule", "chat"), default="rule")
    parser.add_argument("--judge-base-url", default=None, help="OpenAI-compatible server (or env DAM_JUDGE_BASE_URL)")
    parser.add_argument("--judge-model", default=None, help="judge model name (or env DAM_JUDGE_MODEL)")
    parser.add_argument("--judge-api-key-env", default="DAM_JUDGE_API_KEY",
                        help="NAME of the environment variable holding the judge's API key (keys stay off argv)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="scenes per describe_batch call")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="caption length limit in tokens")
    parser.add_argument("--save-captions", default=None, help="write the model's captions here as JSONL")
    parser.add_argument("--regions", action="store_true", help="include per-region verdicts in the JSON")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """"96x64" (or "96,64") -> (96, 64); None or "" -> None (a size drawn per scene)."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)[x,](\d+)", text.strip())
    if not match:
        raise ValueError(f"--size must look like 96x64, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _model_captions(args: argparse.Namespace, scenes: list[Scene]) -> list[str]:
    import torch  # deferred: heavy, only when a model is evaluated (judging a captions file never loads it)

    from dam_model.modeling import DescribeAnythingModel  # deferred with torch: the model module imports it

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = DescribeAnythingModel.from_pretrained(args.model, device=args.device)
    return caption_scenes(model, scenes, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)


def run_evaluate(args: argparse.Namespace) -> int:
    """Caption held-out synthetic scenes with a model (or read captions) and print the DLC-style report."""
    size = parse_size(args.size)
    if args.judge == "chat":
        judge: Judge = ChatJudge(args.judge_base_url, args.judge_model, os.environ.get(args.judge_api_key_env))
    else:
        judge = RuleJudge()
    if args.captions:
        captions, regions, references = read_caption_file(args.captions, size)
        if not all(references):
            references = None  # type: ignore[assignment]
    else:
        if args.n < 1:
            raise ValueError("--n must be >= 1")
        scenes = generate_dataset(args.seed, args.n, size=size)
        objects = [(s, o) for s in scenes for o in s.objects]
        captions = _model_captions(args, scenes)
        regions = [o.attributes for _, o in objects]
        references = [o.long_caption if args.reference == "long" else o.short_caption for _, o in objects]
        if args.save_captions:
            write_jsonl(args.save_captions, [
                {"seed": s.seed, "index": s.index, "object_id": o.object_id, "caption": c,
                 "reference": r} for (s, o), c, r in zip(objects, captions, references)])
    report = evaluate_captions(captions, regions, judge, references=references)
    if args.json:
        print(json.dumps(report.to_dict(include_regions=args.regions), indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (the package's ``python -m dam_model evaluate`` calls run_evaluate)."""
    parser = argparse.ArgumentParser(prog="dam_model evaluate", description=run_evaluate.__doc__)
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
