"""A labelled run of the quality checks: simulated traffic with known anomalies, scored.

Days of hourly traffic from the simulator (its customers, campaigns and diurnal curve) are
landed into an embedded ClickHouse as the landing job lands them. The last day is landed
twice, in two databases: once clean, once with anomalies injected at known hours (a spike,
a per-customer drop, a click-fraud burst from one IP, a hot user, a broken sender whose
events the collector rejects). Every check then runs at the end of each hour of the clean
day, and at the end of each injected hour of the labelled day, and is scored:

- found: the check that should see an anomaly fails and an evidence line names the affected
  customer (spike, drop, bad events) or key (the IP, the user);
- missed: it does not;
- false alarm: an evidence line (or a failure without evidence) that names nothing injected
  in that window.

The Kafka checks run on constructed samples: ``dlq_rate`` and ``schema_drift`` on a
``DeadLetterSample`` made from the simulator's bad events, validated as the collector
validates them (same reasons and details), with the accepted count from the good events;
``consumer_lag`` on lag samples of a landing job that keeps up (no lag anomaly is injected).
"""

from __future__ import annotations

import copy
import random
import re
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from eventplatform.clickhouse import ClickHouse
from eventplatform.events import EventValidator
from eventplatform.events.arrow import events_to_arrow
from eventplatform.quality import checks
from eventplatform.quality.kafka_stats import DeadLetterSample
from eventplatform.settings import REPO_ROOT, QualitySettings
from eventplatform.simulate.traffic import SimulatedEvent, TrafficGenerator, TrafficSpec

# Which check should find each kind of anomaly.
DETECTORS = {
    "spike": "volume_anomaly",
    "drop": "volume_anomaly",
    "click_fraud": "click_fraud",
    "hot_key": "hot_keys",
    "bad_events": "dlq_rate",
}
CHECKS = (
    "freshness",
    "volume_anomaly",
    "duplicate_rate",
    "click_fraud",
    "hot_keys",
    "dlq_rate",
    "schema_drift",
    "consumer_lag",
)
SLICES_PER_HOUR = 12  # events are made in 5-minute slices, landed a few seconds after each


@dataclass(frozen=True)
class Injection:
    kind: str  # spike | drop | click_fraud | hot_key | bad_events
    customer: str
    hour: int  # hour of the labelled day (UTC) it happens in
    # spike: x the customer's usual volume; drop: the share of its events kept; click_fraud,
    # hot_key: events in the hour; bad_events: rejected events, x its usual volume
    factor: float
    key: str | None = None  # the IP (click_fraud) or user (hot_key) it comes from

    @property
    def target(self) -> str:
        """What the evidence must name for the anomaly to count as found."""
        return self.key or self.customer


def default_injections(customers: list[str], scale: float = 1.0) -> list[Injection]:
    """One anomaly of each kind, on customers big and small, at different hours.

    The counts (clicks, a hot key's events) are for 1000 events an hour; ``scale`` is the
    run's volume against that (never below 1: the checks' thresholds are absolute).
    """
    ad = [c for c in customers if c.startswith("adnet")]
    apps = [c for c in customers if c.startswith("app")]
    k = max(1.0, scale)
    return [
        Injection("spike", apps[1], 10, 8.0),  # a small app's traffic x8
        Injection("drop", apps[0], 20, 0.1),  # the second biggest customer loses 90 %
        Injection("click_fraud", ad[1], 13, 300 * k, "203.0.113.66"),  # 300 clicks, one IP
        # one user sends 1200 events (a bot), on a small ad network
        Injection("hot_key", ad[2], 15, 1200 * k, f"{ad[2]}-viewer-bot"),
        # the biggest customer's traffic piles onto one of its campaigns (1500 events)
        Injection("hot_key", ad[0], 9, 1500 * k, f"{ad[0]}-cmp-2"),
        # a small app's sender half breaks: as many rejected events as good ones
        Injection("bad_events", apps[1], 17, 1.0),
    ]


@dataclass
class EvalSpec:
    seed: int = 11
    customers: int = 8
    days: int = 8  # the last one is evaluated, clean and labelled; the others are history
    events_per_hour: int = 1000  # on average over a day, all customers together
    day_noise: float = 0.1  # each day's volume x uniform(1 - noise, 1 + noise)
    bad_rate: float = 0.001  # background, every day: senders' stray events the collector rejects
    start: datetime = datetime(2026, 11, 2, tzinfo=UTC)
    injections: list[Injection] | None = None  # default_injections() when None


@dataclass
class CheckScore:
    injected: int = 0
    found: int = 0
    missed: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)  # labelled day
    clean_false_alarms: list[str] = field(default_factory=list)  # clean day

    @property
    def recall(self) -> float | None:
        return self.found / self.injected if self.injected else None


@dataclass
class EvalReport:
    spec: EvalSpec
    injections: list[Injection]
    scores: dict[str, CheckScore]
    events: int  # good events landed, both databases counted once
    dead_letters: int  # the same way: the history once, then both last days
    evaluations: int
    seconds: float = 0.0

    @property
    def by_kind(self) -> dict[str, tuple[int, int]]:
        """Anomaly kind -> (injected, found)."""
        out: dict[str, tuple[int, int]] = {}
        for inj in self.injections:
            missed = any(m.startswith(f"{inj.kind} of {inj.target} ") for m in self.missed)
            injected, found = out.get(inj.kind, (0, 0))
            out[inj.kind] = (injected + 1, found + (0 if missed else 1))
        return out

    @property
    def missed(self) -> list[str]:
        return [m for s in self.scores.values() for m in s.missed]

    @property
    def clean_false_alarms(self) -> list[str]:
        return [m for s in self.scores.values() for m in s.clean_false_alarms]

    @property
    def false_alarms(self) -> list[str]:
        return [m for s in self.scores.values() for m in s.false_alarms]

    def table(self) -> str:
        rows = [
            (
                "check",
                "injected",
                "found",
                "missed",
                "false alarms",
                "clean-day false alarms",
                "recall",
            )
        ]
        for name in CHECKS:
            s = self.scores[name]
            rows.append(
                (
                    name,
                    str(s.injected),
                    str(s.found),
                    str(len(s.missed)),
                    str(len(s.false_alarms)),
                    str(len(s.clean_false_alarms)),
                    "-" if s.recall is None else f"{s.recall:.2f}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows
        ]
        lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
        return "\n".join(lines)


# -- traffic ---------------------------------------------------------------------------------


@dataclass
class _Hour:
    good: list[dict[str, Any]]  # decoded datums, received_ts set
    landed_ms: list[int]  # per datum
    # (customer, received_ms, detail, injected) of each rejected event
    dead: list[tuple[str, int, str, bool]]


class _Traffic:
    def __init__(self, spec: EvalSpec) -> None:
        self.spec = spec
        self.gen = TrafficGenerator(
            TrafficSpec(
                seed=spec.seed,
                customers=spec.customers,
                peak_length_s=0.0,
                bad_rate=spec.bad_rate,
            )
        )
        self.rng = random.Random(spec.seed + 1)
        self.validator = EventValidator()
        self.day_factor = [
            self.rng.uniform(1 - spec.day_noise, 1 + spec.day_noise) for _ in range(spec.days)
        ]
        self.shares = {c.customer_id: c.weight / sum(self.gen._weights) for c in self.gen.customers}

    def hour_volume(self, day: int, hour: int) -> float:
        return (
            self.spec.events_per_hour
            * self.gen.rate_multiplier(hour * 3600 + 1800)
            * self.day_factor[day]
        )

    def hour(self, day: int, hour: int, injections: list[Injection] = ()) -> _Hour:
        start = self.spec.start + timedelta(days=day, hours=hour)
        start_ms = int(start.timestamp() * 1000)
        n = self.hour_volume(day, hour)
        out = _Hour([], [], [])
        slice_ms = 3_600_000 // SLICES_PER_HOUR
        for s in range(SLICES_PER_HOUR):
            begin = start_ms + s * slice_ms
            made: list[SimulatedEvent] = self.gen.events(
                _draw(self.rng, n / SLICES_PER_HOUR), begin + slice_ms // 2
            )
            injected: list[SimulatedEvent] = []
            for inj in injections:
                usual = n * self.shares[inj.customer] / SLICES_PER_HOUR
                if inj.kind == "drop":
                    made = [
                        e
                        for e in made
                        if e.customer_id != inj.customer or self.rng.random() < inj.factor
                    ]
                    continue
                count = (
                    inj.factor / SLICES_PER_HOUR
                    if inj.kind in ("click_fraud", "hot_key")
                    else (usual * (inj.factor - 1 if inj.kind == "spike" else inj.factor))
                )
                injected += self.gen.inject(
                    inj.kind, inj.customer, _draw(self.rng, count), begin + slice_ms // 2, inj.key
                )
            for event, is_injected in [(e, False) for e in made] + [(e, True) for e in injected]:
                received = begin + self.rng.randrange(slice_ms)
                datum, errors = self.validator.validate(
                    event.event, event.customer_id, received, "simulator"
                )
                if datum is None:
                    detail = "; ".join(str(e) for e in errors)
                    out.dead.append((event.customer_id, received, detail, is_injected))
                else:
                    out.good.append(datum)
                    out.landed_ms.append(begin + slice_ms + self.rng.randrange(2000, 10_000))
        return out


def _draw(rng: random.Random, mean: float) -> int:
    """An integer count with the given mean (the fraction drawn at random)."""
    whole = int(mean)
    return whole + (1 if rng.random() < mean - whole else 0)


def _table(hours: list[_Hour]) -> pa.Table:
    tables = []
    for h in hours:
        if not h.good:
            continue
        # One landing batch per distinct landed time is overkill: the landed time per row is
        # what freshness reads, so the rows get theirs after the conversion.
        table = events_to_arrow(h.good, "events.raw", 0, list(range(len(h.good))), 0)
        landed = pa.array(h.landed_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        index = table.schema.get_field_index("landed_ts")
        tables.append(table.set_column(index, table.schema.field(index), landed))
    return pa.concat_tables(tables)


def _land(ch: ClickHouse, table: pa.Table, token: str) -> None:
    with ch.session() as client:
        client.insert_arrow(
            f"{ch.database}.events", table, settings={"insert_deduplication_token": token}
        )


# -- checks and scoring ----------------------------------------------------------------------


def _dead_letter_sample(
    dead: list[tuple[str, int, str, bool]],
    since: datetime,
    now: datetime,
    injected_only: bool = False,
) -> DeadLetterSample:
    lo, hi = int(since.timestamp() * 1000), int(now.timestamp() * 1000)
    sample = DeadLetterSample(0, 0, Counter(), Counter(), Counter())
    for customer, received, detail, injected in dead:
        if lo <= received < hi and (injected or not injected_only):
            sample.total += 1
            sample.read += 1
            sample.by_reason["validation"] += 1
            sample.by_customer[customer] += 1
            sample.details[("validation", detail[:200])] += 1
    return sample


def _accepted(good: list[tuple[str, int]], since: datetime, now: datetime) -> Counter:
    lo, hi = int(since.timestamp() * 1000), int(now.timestamp() * 1000)
    return Counter(c for c, received in good if lo <= received < hi)


def _lag_history(rng: random.Random, now: datetime) -> tuple[dict[str, int], list]:
    """A landing job that keeps up: lag a few batches deep, up and down, every minute."""
    history = [(now - timedelta(minutes=m), rng.randrange(0, 2000)) for m in range(30, -1, -1)]
    return {"events.raw": history[-1][1]}, history


def run_checks(
    ch: ClickHouse,
    q: QualitySettings,
    now: datetime,
    dead: list[tuple[str, int, str, bool]],
    good: list[tuple[str, int]],
    rng: random.Random,
) -> dict[str, checks.CheckOutcome]:
    since = now - timedelta(minutes=q.window_minutes)
    sample = _dead_letter_sample(dead, since, now)
    accepted = _accepted(good, since, now)
    lag, history = _lag_history(rng, now)
    return {
        "freshness": checks.freshness(ch, q, now),
        "volume_anomaly": checks.volume_anomaly(ch, q, now),
        "duplicate_rate": checks.duplicate_rate(ch, q, now),
        "click_fraud": checks.click_fraud(ch, q, now),
        "hot_keys": checks.hot_keys(ch, q, now),
        "dlq_rate": checks.dlq_rate(
            sample, sum(accepted.values()), q, checks.events_per_customer(ch, since, now)
        ),
        "schema_drift": checks.schema_drift(ch, sample, q, now),
        "consumer_lag": checks.consumer_lag_check(lag, history, q, now),
    }


def _names(line: str, name: str) -> bool:
    """``line`` names ``name`` as a whole token (adnet-02 is not in adnet-02-cmp-1)."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\d)", line) is not None


def _found(line: str, inj: Injection) -> bool:
    """The evidence line names the anomaly's target (and, for volume, its direction)."""
    if inj.kind in ("spike", "drop"):
        return line.startswith(f"{inj.customer}: {inj.kind},")
    return _names(line, inj.target)


def _explained(line: str, names: set[str]) -> bool:
    return any(_names(line, n) for n in names)


def _score_false_alarms(
    outcomes: dict[str, checks.CheckOutcome],
    names: set[str],
    where: str,
    into: dict[str, list[str]],
) -> None:
    for name, outcome in outcomes.items():
        if outcome.passed:
            continue
        lines = outcome.evidence or [f"(no evidence) {outcome.summary}"]
        for line in lines:
            if not _explained(line, names):
                into[name].append(f"{name} at {where}: {line}")


# -- the run ---------------------------------------------------------------------------------


def evaluate(
    spec: EvalSpec | None = None,
    settings: QualitySettings | None = None,
    workdir: Path | None = None,
) -> EvalReport:
    """Generate, land, check and score. ``workdir`` holds the embedded ClickHouse."""
    started = time.monotonic()
    spec = spec or EvalSpec()
    q = settings or QualitySettings()
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ep-qe-")))
        traffic = _Traffic(spec)
        injections = spec.injections or default_injections(
            [c.customer_id for c in traffic.gen.customers], spec.events_per_hour / 1000
        )
        dsn = f"chdb://{workdir}/ch"
        clean = ClickHouse(dsn, "eval_clean")
        labelled = ClickHouse(dsn, "eval_labelled")
        # The folder is the run's own: the engine stays open for its ~300 queries (both
        # instances share the lease: one engine per folder and process).
        stack.enter_context(clean.lease())
        for ch in (clean, labelled):
            ch.apply_ddl(REPO_ROOT / "sql" / "clickhouse")

        last = spec.days - 1
        history = [traffic.hour(d, h) for d in range(last) for h in range(24)]
        history_table = _table(history)
        for ch in (clean, labelled):
            _land(ch, history_table, "history")

        # The evaluated day twice from the same state, the second with the injections: the
        # same events up to the first injection, the same distribution after it.
        twin = copy.deepcopy(traffic.gen), traffic.rng.getstate()
        clean_day = [traffic.hour(last, h) for h in range(24)]
        traffic.gen = twin[0]
        traffic.rng.setstate(twin[1])
        labelled_day = [
            traffic.hour(last, h, [i for i in injections if i.hour == h]) for h in range(24)
        ]
        _land(clean, _table(clean_day), "clean-day")
        _land(labelled, _table(labelled_day), "labelled-day")

        def flat(hours: list[_Hour]):
            dead = [d for h in hours for d in h.dead]
            good = [(g["customer_id"], g["received_ts"]) for h in hours for g in h.good]
            return dead, good

        scores = {name: CheckScore() for name in CHECKS}
        day = spec.start + timedelta(days=last)
        rng = random.Random(spec.seed + 2)
        evaluations = 0

        clean_dead, clean_good = flat(history + clean_day)
        clean_alarms: dict[str, list[str]] = {n: [] for n in CHECKS}
        for h in range(1, 25):
            now = day + timedelta(hours=h)
            outcomes = run_checks(clean, q, now, clean_dead, clean_good, rng)
            evaluations += 1
            _score_false_alarms(outcomes, set(), f"clean {now:%H:%M}", clean_alarms)
        for name, alarms in clean_alarms.items():
            scores[name].clean_false_alarms = alarms

        dead, good = flat(history + labelled_day)
        alarms: dict[str, list[str]] = {n: [] for n in CHECKS}
        for hour in sorted({i.hour for i in injections}):
            now = day + timedelta(hours=hour + 1)
            active = [i for i in injections if i.hour == hour]
            outcomes = run_checks(labelled, q, now, dead, good, rng)
            evaluations += 1
            names = {i.customer for i in active} | {i.key for i in active if i.key}
            # Injected dead letters' details explain the schema drift lines about them
            # (a background bad event with the same detail cannot be told apart).
            since = now - timedelta(minutes=q.window_minutes)
            injected_dead = _dead_letter_sample(dead, since, now, injected_only=True)
            names |= {detail for _, detail in injected_dead.details}
            _score_false_alarms(outcomes, names, f"labelled {now:%H:%M}", alarms)
            for inj in active:
                check = DETECTORS[inj.kind]
                outcome = outcomes[check]
                score = scores[check]
                score.injected += 1
                if not outcome.passed and any(_found(line, inj) for line in outcome.evidence):
                    score.found += 1
                else:
                    score.missed.append(
                        f"{inj.kind} of {inj.target} at {hour:02d}h: {check} "
                        f"{'passed' if outcome.passed else 'failed'} ({outcome.summary}; "
                        f"evidence {outcome.evidence[:3]})"
                    )
        for name, found in alarms.items():
            scores[name].false_alarms = found

        return EvalReport(
            spec,
            injections,
            scores,
            events=len(clean_good) + sum(len(h.good) for h in labelled_day),
            dead_letters=len(dead) + len(clean_dead) - sum(len(h.dead) for h in history),
            evaluations=evaluations,
            seconds=time.monotonic() - started,
        )
