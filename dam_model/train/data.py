"""Training batches from dam_model.data samples: the 8-channel DAM input, prompt augmentation, deterministic order.

An image region (RegionSample) is one image row behind the checkpoint's image query; a video track (TrackSample) is
num_video_frames rows (frames picked and cropped exactly as `describe_video` does at inference) behind its video
query. Loss is on caption tokens only (prompt tokens carry label -100).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from dam_model.augment import DEFAULT_QUERY, augment_prompt, example_rng
from dam_model.data import RegionSample, Sample, TrackSample
from dam_model.focal import normalisation_lut, preprocess_frames, preprocess_regions, select_video_frames
from dam_model.modeling import collate_training_batch
from dam_model.prompt import count_images, encode_training_example
from dam_model.synthetic import generate_dataset, generate_video
from dam_model.train.config import TrainConfig

#: DAM-3B's user turn (dam_model.config.IMAGE_QUERY_DAM3B); models pass their own config.image_query.
IMAGE_QUERY = "<image>\n" + DEFAULT_QUERY

#: (sample index, user-turn query, answer) of one teacher-forced example.
Example = tuple[int, str, str]


def check_samples(samples: Iterable[Any], what: str = "training") -> list[Sample]:
    """The samples as a list; anything but a RegionSample / TrackSample is a TypeError."""
    out = list(samples)
    for number, sample in enumerate(out):
        if not isinstance(sample, (RegionSample, TrackSample)):
            raise TypeError(f"{what} sample {number} is a {type(sample).__name__}: training takes "
                            "dam_model.data.RegionSample / TrackSample (dam_model.data.from_row reads a row)")
    return out


def synthetic_training_samples(seed: int, n_scenes: int, **scene_kwargs: Any) -> list[RegionSample]:
    """One RegionSample (long + short caption) per object of scenes (seed, 0..n_scenes-1) of dam_model.synthetic."""
    return [RegionSample(scene.image, obj.mask, obj.long_caption, obj.short_caption)
            for scene in generate_dataset(seed, n_scenes, **scene_kwargs) for obj in scene.objects]


def synthetic_video_training_samples(seed: int, n_videos: int, **video_kwargs: Any) -> list[TrackSample]:
    """One TrackSample (long + short caption) per object of videos (seed, 0..n_videos-1) of
    dam_model.synthetic.generate_video (every frame of the clip; training picks the model's frames)."""
    out = []
    for index in range(n_videos):
        video = generate_video(seed, index, **video_kwargs)
        out += [TrackSample(list(video.frames), list(obj.masks), obj.long_caption, obj.short_caption)
                for obj in video.objects]
    return out


def _prefix_through_last_image(query: str) -> str:
    """The query's text up to and including its last <image> placeholder, plus a newline."""
    return query[: query.rindex("<image>") + len("<image>")] + "\n"


class RegionData:
    """Preprocessed samples (image regions and video tracks) plus deterministic batch assembly.

    `batch(step, micro)` depends only on (seed, step, micro, rank, world_size): the data order is a per-epoch
    permutation of the samples seeded by (seed, epoch), and prompts come from `example_rng(seed, step, slot)`.
    A step consumes batch_size * grad_accum_steps * world_size consecutive positions of that order; rank r takes
    the contiguous share of micro-batches r * grad_accum_steps .. (r + 1) * grad_accum_steps - 1, and a slot is
    numbered within the whole step, so one process with grad_accum_steps A * W sees exactly what W ranks see.
    """

    def __init__(self, samples: Sequence[Sample], tokenizer: Any, image_size: int, cfg: TrainConfig,
                 augment: bool = True, global_only: bool = False, image_query: str = IMAGE_QUERY,
                 video_query: str | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.samples = check_samples(samples)
        if not self.samples:
            raise ValueError("no training samples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.tokenizer, self.image_size, self.cfg, self.augment = tokenizer, image_size, cfg, augment
        self.rank, self.world_size = rank, world_size
        # The checkpoint's inference query (with its <image> placeholder) stands for the default query; augmented
        # queries keep the same image prefix ("<image>\n" for DAM-3B, "Image: <image>\n" for the joint model).
        if image_query.count("<image>") != 1:
            raise ValueError("image_query must contain exactly one <image> placeholder")
        self.image_query = image_query
        self.image_prefix = _prefix_through_last_image(image_query)
        # Video tracks: the checkpoint's video query ("Video: <image>...<image>\nGiven the video ...") stands for
        # the default query; augmented queries follow its frame placeholders ("Video: <image>...<image>\n").
        self.video_query = video_query
        self.video_prefix: str | None = None
        self.num_video_frames = 0
        if video_query is not None:
            self.num_video_frames = video_query.count("<image>")
            if self.num_video_frames < 1:
                raise ValueError("video_query must contain <image> placeholders (one per frame)")
            self.video_prefix = _prefix_through_last_image(video_query)
        if self.video_query is None and self.num_videos:
            raise ValueError("video samples need a video_query (the model's config.video_query)")
        # Ablation: every sample takes the plain path (global view + mask only, no focal crop, no adapters).
        self.global_only = global_only
        self._lut = normalisation_lut()
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._perm_epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)
        if cfg.cache_preprocessed:
            for i in range(len(self.samples)):
                self._pixels(i)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_videos(self) -> int:
        return sum(isinstance(s, TrackSample) for s in self.samples)

    # -- pixels ----------------------------------------------------------------------------------------------------
    def _levels(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 levels [k, 8, S, S] and is_focal [k] of one sample: 1 row for an image region, num_video_frames
        rows for a video track (frames chosen and cropped by the functions `prepare_video` uses)."""
        if isinstance(sample, TrackSample):
            chosen = select_video_frames(sample.masks, self.num_video_frames)
            regions = preprocess_frames([sample.frames[i] for i in chosen], [sample.masks[i] for i in chosen],
                                        self.image_size)
        else:
            regions = preprocess_regions(sample.image, [sample.mask], self.image_size)
        levels = torch.as_tensor(np.asarray(regions.pixel_values_u8))
        focal = torch.as_tensor(np.asarray(regions.is_focal), dtype=torch.bool)
        return levels, torch.zeros_like(focal) if self.global_only else focal

    def _pixels(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """8-channel float32 tensor [k, 8, S, S] and is_focal [k] of one sample; cached as the exact uint8 levels."""
        if not self.cfg.cache_preprocessed:
            levels, focal = self._levels(self.samples[index])
        else:
            if index not in self._cache:
                self._cache[index] = self._levels(self.samples[index])
            levels, focal = self._cache[index]
            focal = focal.clone()
        return torch.as_tensor(self._lut[levels.numpy()]), focal

    # -- order -----------------------------------------------------------------------------------------------------
    def _sample_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.samples))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def _chunk(self, micro: int) -> int:
        """This rank's micro-batch `micro` as a micro-batch number within the whole (global) step."""
        if not 0 <= micro < self.cfg.grad_accum_steps:
            raise ValueError(f"micro must be in [0, {self.cfg.grad_accum_steps}), got {micro}")
        return self.rank * self.cfg.grad_accum_steps + micro

    def indices(self, step: int, micro: int) -> list[int]:
        """Sample indices of this rank's micro-batch `micro` of optimizer step `step` (0-based)."""
        first = step * self.cfg.global_batch_size(self.world_size) + self._chunk(micro) * self.cfg.batch_size
        return [self._sample_index(first + j) for j in range(self.cfg.batch_size)]

    # -- prompts ---------------------------------------------------------------------------------------------------
    def examples(self, step: int, micro: int) -> list[Example]:
        """(sample index, query, answer) for each slot of a micro-batch."""
        out = []
        base = self._chunk(micro) * self.cfg.batch_size
        for slot, index in enumerate(self.indices(step, micro)):
            sample = self.samples[index]
            video = isinstance(sample, TrackSample)
            if self.augment:
                rng = example_rng(self.cfg.seed, step, base + slot)
                ex = augment_prompt(sample.caption, sample.short_caption, rng, self.cfg.default_prompt_fraction)
                out.append((index, self.full_query(ex.query, video=video), ex.answer))
            else:
                out.append((index, self.default_query(video), sample.caption))
        return out

    def default_query(self, video: bool = False) -> str:
        """The inference query: the checkpoint's image query, or its video query for a video track."""
        if not video:
            return self.image_query
        if self.video_query is None:
            raise ValueError("no video_query given")
        return self.video_query

    def full_query(self, query: str, video: bool = False) -> str:
        """User-turn text for an augmented query: the checkpoint's own query for DEFAULT_QUERY, else prefix + query
        (the image prefix, or the video prefix with its frame placeholders for a video track)."""
        if query == DEFAULT_QUERY:
            return self.default_query(video)
        prefix = self.video_prefix if video else self.image_prefix
        if prefix is None:
            raise ValueError("no video_query given")
        return prefix + query

    # -- tensors ---------------------------------------------------------------------------------------------------
    def encode(self, index: int, query: str, answer: str) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor]:
        """(input_ids, labels, pixel_values [k, 8, S, S], is_focal [k]) of one teacher-forced example."""
        ids, labels = encode_training_example(self.tokenizer, query, answer)
        ids, labels = list(ids), list(labels)
        if self.cfg.max_seq_len is not None:
            ids, labels = ids[: self.cfg.max_seq_len], labels[: self.cfg.max_seq_len]
        pixels, focal = self._pixels(index)
        if count_images(ids) != pixels.shape[0]:
            raise ValueError(f"sample {index}: the prompt keeps {count_images(ids)} <image> placeholders for "
                             f"{pixels.shape[0]} images (max_seq_len={self.cfg.max_seq_len} too short?)")
        return ids, labels, pixels, focal

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Right-padded tensors for model.forward: input_ids/attention_mask/labels [B, T], pixel_values
        [sum of images, 8, S, S] and is_focal [sum of images] in row order (an image region adds 1, a video track
        num_video_frames), via dam_model.modeling.collate_training_batch."""
        encoded = [self.encode(index, query, answer) for index, query, answer in examples]
        pad = self.tokenizer.pad_token_id
        return collate_training_batch(encoded, pad_token_id=int(pad) if pad is not None else 0)

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        """This rank's collated micro-batch for (step, micro)."""
        return self.collate(self.examples(step, micro))

    def eval_examples(self) -> list[Example]:
        """Every sample once, in order: its default query (image or video) and its long caption."""
        return [(i, self.default_query(isinstance(s, TrackSample)), s.caption) for i, s in enumerate(self.samples)]

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Every sample once (default query + long caption), in order; with world_size > 1 only the batches
        number rank, rank + world_size, ... (each rank scores its share)."""
        examples = self.eval_examples()
        for number, start in enumerate(range(0, len(examples), batch_size)):
            if number % world_size == rank:
                yield self.collate(examples[start:start + batch_size])
