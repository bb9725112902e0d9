"""Bulk pre-annotation of a Label Studio project with the served DAM model, outside Label Studio's predict timeout.

A job, not a route: backend/ serves; this package selects a project's tasks through Label Studio's API (paginated),
fetches their media with ls_io's fetcher and SSRF rules, reads their regions with ls_io.tasks and their video
tracks with ls_io.video_tasks (the backend's reading), captions regions gathered ACROSS tasks in full model batches
(video tracks one describe_video each), builds each prediction with ls_io.results
and imports them in bulk, journaling every step so that a kill -9 and a restart end with exactly one prediction per
task per model_version. Data parallel under torchrun / accelerate launch: rank r takes the tasks whose id % world
== r.

- config: JobConfig (one environment variable per field, flags generated);
- job: run_job(JobParts) -> Summary, the run of one rank; cli: main(argv);
- journal: the append-only journal and its replay; posting: bulk import, reconcile, sweep;
- batching: CrossTaskBatcher; sharding: Shard, ProcessGroup; labelstudio: the SDK calls; models: which model.
"""
import os

# Before torch loads OpenMP: spin-waiting OpenMP threads starve the media threads on a CPU run (and a busy shared
# machine slows ~20x); on a GPU it changes nothing. An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import JobConfig  # noqa: E402 - after the OpenMP setting on purpose
from .job import JobParts, run_job  # noqa: E402
from .summary import Summary  # noqa: E402

__all__ = ["JobConfig", "JobParts", "Summary", "run_job"]
