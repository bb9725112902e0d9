"""Training of DAM on image regions and video tracks (dam_model.data samples), one concern per module:

- config:        TrainConfig (every hyperparameter, validated, with its documentation)
- data:          RegionData (preprocessing, deterministic batches, prompt augmentation), synthetic samples
- parts:         which parameters learn (freezing by part, LoRA, merging it back)
- schedule:      step count, AdamW, warm-up + cosine
- checkpointing: atomic step folders, RNG states, resume "auto", metrics.jsonl, the final folder
- distributed:   DistributedDataParallel over torchrun / accelerate launch processes
- provenance:    code version and git commit saved with a model
- loop:          train(), the loop itself
- cli:           flags generated from TrainConfig, and `python -m dam_model train`
"""
from dam_model.train.checkpointing import (CHECKPOINT_DIRNAME, FINAL_DIRNAME, TRAINER_STATE, find_resume_checkpoint,
                                           list_checkpoints, save_checkpoint, write_final)
from dam_model.train.cli import (add_train_args, add_train_command_args, load_manifest, run_train_command,
                                 train_args_given, train_args_to_argv, train_config_from_args)
from dam_model.train.config import TRAINABLE_PARTS, TrainConfig, field_docs
from dam_model.train.data import (IMAGE_QUERY, RegionData, check_samples, synthetic_training_samples,
                                  synthetic_video_training_samples)
from dam_model.train.distributed import DistributedContext, init_distributed
from dam_model.train.loop import evaluate_loss, train
from dam_model.train.parts import apply_lora, merged_copy, set_trainable
from dam_model.train.provenance import training_code_version
from dam_model.train.schedule import lr_factor, total_steps

__all__ = [
    "CHECKPOINT_DIRNAME", "FINAL_DIRNAME", "IMAGE_QUERY", "TRAINABLE_PARTS", "TRAINER_STATE", "DistributedContext",
    "RegionData", "TrainConfig", "add_train_args", "add_train_command_args", "apply_lora", "check_samples",
    "evaluate_loss", "field_docs", "find_resume_checkpoint", "init_distributed", "list_checkpoints", "load_manifest",
    "lr_factor", "merged_copy", "run_train_command", "save_checkpoint", "set_trainable", "synthetic_training_samples",
    "synthetic_video_training_samples", "total_steps", "train", "train_args_given", "train_args_to_argv",
    "train_config_from_args", "training_code_version", "write_final",
]
