"""The nightly self-training loop: pull -> build -> pseudo-label -> train -> evaluate -> promote, as named steps.

Layout of the loop's working folder (``--work-root`` / ``LOOP_WORK_ROOT``, default ``./loop_work``)::

    manifest.json                 cumulative manifest of the source bucket (copy of the latest snapshot's)
    snapshots/<snapshot id>/      immutable: objects/ (raw exported JSON) + manifest.json + snapshot.json
    datasets/<snapshot id>/       the dataset folder (dam_loop.dataset): samples, masks, frames, dataset.json
    train/<snapshot id>-<cfg>/    training output and checkpoints (stable name so a killed run resumes)
    runs/<run id>/nightly.log     one log per nightly run (+ summary.json)
    state.json                    the last snapshot a nightly run finished with
    nightly.lock                  fcntl lock: one nightly run at a time (dam_loop.lock)

Modules: ``cli`` (exit codes, errors, the one ``run_main``, logging, shared flags), ``dataset`` (the dataset folder
format, writer and reader), ``models_root`` (promoted versions and the serving pointer), ``lock``, ``provenance``
(time stamps, run ids, git commit) and ``steps/`` (one module per step; ``steps.nightly`` runs them in order).
The loop imports dam_model and ls_io (the Label Studio format, once); never backend or dam_tools.
"""
