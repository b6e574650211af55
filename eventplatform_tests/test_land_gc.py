"""A landing run's garbage-collector settings, and the process's after it."""

from __future__ import annotations

import gc

from eventplatform.land.lander import GC_YOUNG_EVERY, _collector_for_batches


def test_overlapping_runs_in_one_process_leave_the_collector_as_it_was() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()  # (conftest.py froze its heap)
    first, second = _collector_for_batches(), _collector_for_batches()
    with first:
        assert gc.get_threshold()[0] == GC_YOUNG_EVERY and gc.get_freeze_count() > 0
        second.__enter__()
    # the first run ended, the second goes on: still tuned for it
    assert gc.get_threshold()[0] == GC_YOUNG_EVERY
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_a_run_freezes_the_heap_only_if_nothing_is_frozen_and_unfreezes_what_it_froze() -> None:
    gc.unfreeze()  # as in a process that never froze its heap
    try:
        with _collector_for_batches():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
    finally:
        gc.freeze()  # the test session's, as conftest.py left it (near enough)
