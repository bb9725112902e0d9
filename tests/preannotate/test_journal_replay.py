"""Exactly once: a crash (kill -9 stand-in) at every step of the import protocol, then a restart, leaves exactly one
prediction of the model_version per task, and the journal shows that finished tasks were not computed again."""
from __future__ import annotations

import json

import pytest

from dam_preannotate.journal import Journal, journal_path, replay
from pre_fakes import VERSION, FakeDAM, MemoryLabelStudio, SimulatedCrash, make_tasks

TASKS = list(range(1, 11))  # post_batch 4: imports of 4, 4 and 2 tasks


def runs_of(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["run"] for r in records if r["event"] == "start"))


def posted_tasks(records: list[dict], run: str | None = None) -> set[int]:
    posted = {r["batch"] for r in records if r["event"] == "posted"}
    return {t for r in records if r["event"] == "intent" and r["batch"] in posted and run in (None, r["run"])
            for t in r["tasks"]}


def computed_tasks(records: list[dict], run: str) -> list[int]:
    """Tasks whose prediction a run computed (every computed prediction is journaled as an intent first)."""
    return [t for r in records if r["event"] == "intent" and r["run"] == run for t in r["tasks"]]


def assert_exactly_one(ls: MemoryLabelStudio) -> None:
    held = ls.of_version()
    assert sorted(held) == TASKS, f"tasks without a prediction: {sorted(set(TASKS) - set(held))}"
    assert all(len(ids) == 1 for ids in held.values()), {t: ids for t, ids in held.items() if len(ids) != 1}


CRASHES = [("import", n, when) for n in (1, 2, 3) for when in ("before", "after")]


@pytest.mark.parametrize("crash", CRASHES, ids=["-".join(map(str, c)) for c in CRASHES])
def test_a_crash_at_any_import_step_then_a_restart_finishes_exactly_once(run, journal_records, crash):
    ls = MemoryLabelStudio(make_tasks(TASKS))
    ls.crash = crash
    with pytest.raises(SimulatedCrash):
        run(ls)
    first = journal_records()
    finished = posted_tasks(first)
    stored_unjournaled = set(ls.imports[-1]) if crash[2] == "after" else set()  # stored, answer never journaled

    model = FakeDAM()
    summary = run(ls, model=model)
    assert_exactly_one(ls)
    records = journal_records()
    second = runs_of(records)[1]
    recomputed = computed_tasks(records, second)
    assert not set(recomputed) & (finished | stored_unjournaled), "a finished task was computed again"
    assert sorted(recomputed) == sorted(set(TASKS) - finished - stored_unjournaled)
    assert summary.skipped_journal == len(finished)
    assert summary.recovered == len(stored_unjournaled)
    assert sum(sum(call) for call in model.calls) == len(recomputed)


FORCE_CRASHES = [(kind, n, when) for kind in ("delete", "import") for n in (1, 5) for when in ("before", "after")
                 if not (kind == "import" and n == 5)]


@pytest.mark.parametrize("crash", FORCE_CRASHES, ids=["-".join(map(str, c)) for c in FORCE_CRASHES])
def test_force_replaces_old_predictions_exactly_once_through_a_crash(run, journal_records, crash):
    ls = MemoryLabelStudio(make_tasks(TASKS))
    for task in TASKS:  # an earlier prediction of the same version on every task
        ls.import_predictions(1, [{"task": task, "result": [], "score": 0.1, "model_version": VERSION}])
    old = {pid for ids in ls.of_version().values() for pid in ids}
    ls.counts.clear()
    ls.crash = crash
    with pytest.raises(SimulatedCrash):
        run(ls, force=True)
    run(ls, force=True)
    assert_exactly_one(ls)
    assert not old & {pid for ids in ls.of_version().values() for pid in ids}, "an old prediction survived --force"


def test_without_force_tasks_already_predicted_in_label_studio_are_skipped(run):
    ls = MemoryLabelStudio(make_tasks(TASKS))
    ls.import_predictions(1, [{"task": 3, "result": [], "score": 0.1, "model_version": VERSION},
                              {"task": 4, "result": [], "score": 0.1, "model_version": "other-version"}])
    summary = run(ls)
    assert summary.skipped_predicted == 1 and summary.done == 9
    assert_exactly_one(ls)


def test_a_lost_answer_whose_request_lands_after_the_restart_check_is_swept(tmp_path, run, journal_records):
    ls = MemoryLabelStudio(make_tasks(TASKS))
    ls.lose_answer = (1, "late")  # import 1 times out; Label Studio commits it only later
    ls.crash = ("import", 2, "before")
    with pytest.raises(SimulatedCrash):
        run(ls)
    ls.land_late_on_import = True  # ... during the restart, after its reconcile found those tasks missing
    summary = run(ls)
    assert_exactly_one(ls)
    assert summary.duplicates_removed == 4
    events = [r["event"] for r in journal_records()]
    assert "reconciled" in events and "swept" in events
    assert not replay(tmp_path / "journal" / "project-1" / VERSION).unswept


@pytest.mark.parametrize("mode", ["stored", "late"])
def test_a_lost_answer_in_a_live_run_is_settled_in_the_same_run(run, mode):
    ls = MemoryLabelStudio(make_tasks(TASKS))
    ls.lose_answer = (2, mode)
    summary = run(ls)
    assert_exactly_one(ls)
    if mode == "stored":
        assert summary.recovered == 4 and summary.done == 6
    else:  # never landed: computed again in an extra pass
        assert summary.done == 10


def test_a_torn_last_journal_line_is_dropped_and_the_journal_stays_readable(tmp_path, run, journal_records):
    ls = MemoryLabelStudio(make_tasks(TASKS))
    ls.crash = ("import", 2, "after")
    with pytest.raises(SimulatedCrash):
        run(ls)
    path = journal_path(tmp_path / "journal" / "project-1" / VERSION, 0)
    with open(path, "ab") as handle:
        handle.write(b'{"event":"posted","ba')  # the crash cut a write in half
    run(ls)
    assert_exactly_one(ls)
    for line in path.read_text().splitlines():
        json.loads(line)  # every line whole again: the torn tail was cut before appending


def test_replay_is_order_free_across_rank_files(tmp_path):
    folder = tmp_path / "j"
    with Journal(folder, 0) as rank0, Journal(folder, 1) as rank1:
        rank1.write("intent", batch="b1", tasks=[1, 3], replace={"3": [7]})
        rank0.write("reconciled", batch="b1", found=[1], missing=[])  # a later world: task 1 now rank 0's
        rank0.write("intent", batch="b2", tasks=[2], replace={})
        rank0.write("posted", batch="b2")
    state = replay(folder)
    assert state.done == {1, 2}
    assert list(state.open) == [3] and state.open[3][0].replace == [7]
