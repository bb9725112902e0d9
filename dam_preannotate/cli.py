"""`dam-preannotate` / `python -m dam_preannotate`: pre-annotate a Label Studio project in bulk.

    LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... dam-preannotate --project 3
    torchrun --nproc-per-node 8 -m dam_preannotate --project 3        # one process per GPU

Exit codes: 0 every selected task holds a prediction (or was skipped), 3 some tasks failed (listed in
failed-rank<r>.jsonl beside the journal; rerun with --task-ids-file), 1 the job could not run (configuration,
Label Studio or the model unavailable), 2 bad flags.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from ls_io.media import MediaConfig, MediaFetcher
from ls_io.s3 import RedactSecrets, redact

from .config import JobConfig, add_config_args, config_from_args
from .job import JobParts, run_job
from .labelstudio import SdkLabelStudio
from .models import LazySegmenter, choose_model, load_model, resolve_device, resolve_dtype
from .sharding import ProcessGroup, shard_from_env
from .summary import Summary

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
log = logging.getLogger("dam_preannotate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dam-preannotate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    return parser


def setup_logging(cfg: JobConfig, rank: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(extra_secrets=[cfg.label_studio_api_key]))  # the key never reaches a log line
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def media_fetcher(cfg: JobConfig) -> MediaFetcher:
    """The backend's fetcher and SSRF rules (MEDIA_* from the environment); no caches: each image is read once."""
    media = MediaConfig.from_env(label_studio_url=cfg.label_studio_url, label_studio_api_key=cfg.label_studio_api_key,
                                 media_cache_dir="", image_cache_items=0)
    return MediaFetcher(media)


def execute(cfg: JobConfig) -> int:
    shard = shard_from_env()
    setup_logging(cfg, shard.rank)
    if cfg.torch_num_threads > 0:
        torch.set_num_threads(cfg.torch_num_threads)
    with ProcessGroup(shard) as group:
        choice = choose_model(cfg)
        device = resolve_device(cfg.device, shard.local_rank)
        log.info("model %s (%s: %s) on %s", choice.version, choice.origin, choice.source, device)
        model = load_model(choice, device, resolve_dtype(cfg.dtype, device))
        parts = JobParts(cfg=cfg, ls=SdkLabelStudio(cfg.label_studio_url, cfg.label_studio_api_key,
                                                    cfg.request_timeout, cfg.page_size),
                         model=model, model_version=choice.version, fetcher=media_fetcher(cfg),
                         segmenter=LazySegmenter(cfg.segmenter, cfg.sam2_config, cfg.sam2_checkpoint, device),
                         shard=shard, barrier=group.barrier)
        summary = run_job(parts)
        total = Summary.merge(group.all_gather(summary))
    if shard.rank == 0:
        print(total.report(choice.version, shard.world), flush=True)
        if total.failed:
            print(f"failed tasks: {cfg.journal_folder(choice.version)}/failed-rank*.jsonl "
                  "(rerun them with --task-ids-file)", flush=True)
    return EXIT_SOME_FAILED if total.failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"dam-preannotate: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return execute(cfg)
    except KeyboardInterrupt:
        log.error("interrupted; the journal lets a rerun with the same flags finish the job")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - one readable line, secrets redacted, and a non-zero exit
        log.error("pre-annotation stopped: %s", redact(f"{type(exc).__name__}: {exc}"))
        log.debug("details", exc_info=True)
        return EXIT_ERROR
