"""The marts as declared in ``sql/marts/*.sql``: each file is one mart, its header says what it is.

A mart file starts with a comment header, then one SELECT::

    -- name: campaign_performance_daily
    -- description: What a row is and what the mart is for
    --   (an indented comment line continues the previous field).
    -- owners: team:ad-ops, team:analytics
    -- grain: event_date, customer_id, campaign_id
    -- column impressions: Impressions served (deduplicated by customer_id, event_id).
    -- reconcile: sum(impressions) == (SELECT count(*) FROM events WHERE event_type = 'impression')

``reconcile`` lines are the mart's asset check: the left side is computed over the built
mart (relation ``mart``), the right side over the day's landed events; they must be equal.
The SELECT reads the relations the builder provides (see ``eventplatform.marts.build``) and
the parameters ``$event_date`` (DATE) and ``$retention_weeks``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FIELD = re.compile(r"^--\s?(column\s+\w+|[a-z_]+):\s*(.*)$")
_CONTINUATION = re.compile(r"^--\s{2,}(\S.*)$")


class MartFileError(ValueError):
    pass


@dataclass(frozen=True)
class Reconciliation:
    mart_expr: str  # over the relation `mart`
    events_expr: str  # a scalar over the day's inputs (events, events_raw, dead_letters, ...)

    @property
    def label(self) -> str:
        return self.mart_expr


@dataclass(frozen=True)
class Mart:
    name: str
    description: str
    owners: tuple[str, ...]
    grain: tuple[str, ...]
    columns: dict[str, str]  # name -> description, in output order
    reconciliations: tuple[Reconciliation, ...]
    sql: str
    path: Path

    @property
    def reads_history(self) -> bool:
        """Whether the mart reads days before its own (``user_activity``, the window's state)."""
        return "user_activity" in self.sql

    @property
    def parameters(self) -> set[str]:
        return set(re.findall(r"\$([a-z_]+)", self.sql))


def parse_mart(path: Path) -> Mart:
    fields: dict[str, str] = {}
    columns: dict[str, str] = {}
    reconcile: list[str] = []
    body: list[str] = []
    last: tuple[str, str] | None = None  # (kind, key) of the field a continuation extends
    for line in path.read_text().splitlines():
        stripped = line.rstrip()
        if body or not stripped.startswith("--"):
            if stripped:
                body.append(line)
            continue
        if (match := _FIELD.match(stripped)) is not None:
            key, value = match.group(1), match.group(2).strip()
            if key.startswith("column"):
                name = key.split()[1]
                columns[name] = value
                last = ("column", name)
            elif key == "reconcile":
                reconcile.append(value)
                last = ("reconcile", str(len(reconcile) - 1))
            else:
                fields[key] = value
                last = ("field", key)
        elif (cont := _CONTINUATION.match(stripped)) is not None and last is not None:
            kind, key = last
            if kind == "column":
                columns[key] += " " + cont.group(1)
            elif kind == "reconcile":
                reconcile[int(key)] += " " + cont.group(1)
            else:
                fields[key] += " " + cont.group(1)
    for required in ("name", "description", "owners", "grain"):
        if not fields.get(required):
            raise MartFileError(f"{path.name}: header has no '-- {required}:' line")
    if fields["name"] != path.stem:
        raise MartFileError(f"{path.name}: name {fields['name']!r} differs from the file name")
    reconciliations = []
    for text in reconcile:
        if text.count(" == ") != 1:
            raise MartFileError(f"{path.name}: reconcile needs one ' == ': {text!r}")
        left, right = (side.strip() for side in text.split(" == "))
        reconciliations.append(Reconciliation(left, right))
    grain = tuple(g.strip() for g in fields["grain"].split(",") if g.strip())
    missing = [g for g in grain if g not in columns]
    if missing:
        raise MartFileError(f"{path.name}: grain column(s) without a description: {missing}")
    return Mart(
        name=fields["name"],
        description=fields["description"],
        owners=tuple(o.strip() for o in fields["owners"].split(",") if o.strip()),
        grain=grain,
        columns=columns,
        reconciliations=tuple(reconciliations),
        sql="\n".join(body).rstrip().rstrip(";"),
        path=path,
    )


def load_marts(sql_dir: Path) -> list[Mart]:
    """Every mart in ``sql_dir`` (normally ``sql/marts``), in file-name order."""
    return [parse_mart(p) for p in sorted(sql_dir.glob("*.sql"))]
