"""The labelled run: simulated days with known anomalies, every check scored on them."""

from __future__ import annotations

from pathlib import Path

from eventplatform.quality.evaluate import DETECTORS, EvalSpec, evaluate


def test_every_injected_anomaly_found_and_no_false_alarm(tmp_path: Path) -> None:
    report = evaluate(EvalSpec(), workdir=tmp_path)
    print(report.table())  # shown with -s, and on failure

    assert set(report.by_kind) == set(DETECTORS), "one anomaly of each kind is injected"
    assert not report.missed, "missed:\n" + "\n".join(report.missed)
    assert all(found == injected for injected, found in report.by_kind.values())
    assert not report.clean_false_alarms, "false alarms on the clean day:\n" + "\n".join(
        report.clean_false_alarms
    )
    assert not report.false_alarms, "false alarms on the labelled day:\n" + "\n".join(
        report.false_alarms
    )
    # The clean day is checked at the end of every hour, the labelled day at each injection.
    assert report.evaluations == 24 + len({i.hour for i in report.injections})
    assert report.dead_letters > 0 and report.events > 100_000
