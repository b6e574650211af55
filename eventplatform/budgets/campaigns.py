"""Campaigns with budgets: parsed from CSV with every bad row reported, loaded all or nothing.

Every campaign belongs to one customer, its owner: only the owner's cost events spend its
budget (see spend.py). The owner is the CSV's ``owner`` column, or, in a file without one,
its ``advertiser`` (the simulator's and older files name the customer there). A campaign id is
global (ad servers key pause signals by it), so a load that would hand an existing campaign to
another owner is refused: a typo or a second customer reusing an id must not move a budget.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import date
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventplatform.clickhouse import ClickHouse
from eventplatform.collect.customers import CUSTOMER_ID

COLUMNS = (
    "advertiser",
    "campaign_id",
    "total_budget",
    "daily_budget",
    "currency",
    "start",
    "end",
    "timezone",
)
OWNER = "owner"  # optional column; without it the advertiser is the owner


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    advertiser: str
    owner: str  # the customer id whose events spend the budget
    total_budget: float
    daily_budget: float
    currency: str
    start_date: date
    end_date: date
    timezone: str


class CampaignFileError(ValueError):
    """The file has bad rows; ``errors`` lists them as 'line N: ...'. Nothing was loaded."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} bad row(s), nothing loaded:\n" + "\n".join(errors))
        self.errors = errors


def parse_campaigns(text: str) -> list[Campaign]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CampaignFileError(
            [
                f"line 1: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)} "
                f"(and optionally {OWNER})"
            ]
        )
    owner_column = OWNER if OWNER in (reader.fieldnames or []) else "advertiser"
    campaigns, errors, seen = [], [], {}
    for row in reader:
        line = reader.line_num
        problems = []
        cid = (row["campaign_id"] or "").strip()
        if not cid:
            problems.append("campaign_id is empty")
        elif cid in seen:
            problems.append(f"campaign_id {cid} already on line {seen[cid]}")
        seen.setdefault(cid, line)
        owner = (row[owner_column] or "").strip()
        column = OWNER if owner_column == OWNER else "advertiser (the owner: no owner column)"
        if not owner:
            problems.append(f"{column} is empty")
        elif not CUSTOMER_ID.fullmatch(owner):
            # A display name as owner would match no sender: the campaign would never spend,
            # so never pause.
            problems.append(
                f"{column} {owner!r} is not a customer id (1-63 lowercase letters, digits "
                "or '-')" + ("" if owner_column == OWNER else "; add an owner column")
            )
        budgets = {}
        for name in ("total_budget", "daily_budget"):
            try:
                budgets[name] = float(row[name])
                if not budgets[name] >= 0:
                    problems.append(f"{name} must be a number >= 0, got {row[name]!r}")
            except (TypeError, ValueError):
                problems.append(f"{name} must be a number, got {row[name]!r}")
        dates = {}
        for name in ("start", "end"):
            try:
                dates[name] = date.fromisoformat((row[name] or "").strip())
            except ValueError:
                problems.append(f"{name} must be a date YYYY-MM-DD, got {row[name]!r}")
        if len(dates) == 2 and dates["end"] < dates["start"]:
            problems.append(f"end {dates['end']} is before start {dates['start']}")
        tz = (row["timezone"] or "").strip()
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"timezone {tz!r} is not an IANA time zone")
        currency = (row["currency"] or "").strip()
        if len(currency) != 3 or not currency.isalpha():
            problems.append(f"currency must be a 3-letter code, got {currency!r}")
        if problems:
            errors.extend(f"line {line}: {p}" for p in problems)
            continue
        campaigns.append(
            Campaign(
                cid,
                (row["advertiser"] or "").strip(),
                owner,
                budgets["total_budget"],
                budgets["daily_budget"],
                currency.upper(),
                dates["start"],
                dates["end"],
                tz,
            )
        )
    if errors:
        raise CampaignFileError(errors)
    return campaigns


class CampaignOwnerError(ValueError):
    """The load would change the owner of existing campaigns. Nothing was loaded."""

    def __init__(self, changes: list[str]) -> None:
        super().__init__(
            f"{len(changes)} campaign(s) already belong to another customer, nothing loaded:\n"
            + "\n".join(changes)
        )
        self.changes = changes


def load_campaigns(clickhouse: ClickHouse, campaigns: list[Campaign]) -> int:
    """Upsert in one insert (one block: all rows or none). Returns the number loaded.

    Refuses (``CampaignOwnerError``) a row whose campaign id exists with another owner: its
    budget would start counting another customer's events.
    """
    owners = {c.campaign_id: c.owner for c in read_campaigns(clickhouse)}
    changes = [
        f"{c.campaign_id}: owned by {owners[c.campaign_id]}, the file says {c.owner}"
        for c in campaigns
        if owners.get(c.campaign_id, c.owner) != c.owner
    ]
    if changes:
        raise CampaignOwnerError(changes)
    version = time.time_ns()
    rows = [
        [
            c.campaign_id,
            c.advertiser,
            c.owner,
            c.total_budget,
            c.daily_budget,
            c.currency,
            c.start_date,
            c.end_date,
            c.timezone,
            version,
        ]
        for c in campaigns
    ]
    with clickhouse.session() as client:
        client.insert(
            f"{clickhouse.database}.campaigns",
            rows,
            column_names=[
                "campaign_id",
                "advertiser",
                "owner",
                "total_budget",
                "daily_budget",
                "currency",
                "start_date",
                "end_date",
                "timezone",
                "version",
            ],
        )
    return len(rows)


def read_campaigns(clickhouse: ClickHouse) -> list[Campaign]:
    """Every campaign (in the caller's session, if any: a refresh holds one)."""
    with clickhouse.session() as client:
        result = client.query(
            "SELECT campaign_id, advertiser, owner, total_budget, daily_budget, currency, "
            f"start_date, end_date, timezone FROM {clickhouse.database}.campaigns FINAL "
            "ORDER BY campaign_id"
        )
    return [Campaign(*row) for row in result.result_rows]
