"""The enrichment of a landing batch: every enrichment, columnar, over the decoded rows.

:meth:`Enricher.enrich` takes the landed table (envelope, payload, Kafka columns) and returns
it with the enriched columns appended (``ENRICHED_FIELDS``) and ``ip`` replaced by its
anonymised form. Each enrichment is a function of the event and reference data only (the
parser's rules, the geo database, the customer's settings and the rates in effect at the
event's ``received_ts``), so a replayed batch gives the same rows. Each works on the batch's
distinct values (user agents, IPs, URLs and referrers repeat) and never raises on bad input:
a failed lookup leaves nulls and adds to the batch's counts (``enrichment_counts``), which go
into the batch report and each lake file's metadata.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eventplatform.enrich import bots, campaign, currency, geo, ipanon, referrer, useragent
from eventplatform.enrich.currency import Rates, RatesStore
from eventplatform.enrich.customer_settings import SettingsHistory, SettingsStore
from eventplatform.events.arrow import ENRICHED_FIELDS, EVENT_BYTES_FIELD, with_event_bytes
from eventplatform.land.crashpoints import crashpoint
from eventplatform.settings import Settings

METADATA_KEY = b"eventplatform.enrichment"
MS_PER_DAY = 86_400_000
DEVICE_CLASSES = pa.array(["desktop", "mobile", "tablet", "ctv"])


@dataclass
class Reference:
    """The reference data a batch is enriched with, cached; read again only when a batch has
    an event received later than the cached copy covers (see customer_settings.py)."""

    settings: SettingsStore | None = None  # None: every customer has the defaults
    rates: RatesStore | None = None  # None: no rates loaded
    _history: SettingsHistory | None = None
    _tables: list[Rates] | None = None
    reads: int = 0

    def for_batch(self, last_received_ms: int) -> tuple[SettingsHistory, list[Rates]]:
        if self._history is None or not self._history.covers(last_received_ms):
            now = int(time.time() * 1000)
            self._history = (
                self.settings.history()
                if self.settings is not None
                else SettingsHistory([], now, 1 << 62)
            )
            self._tables = self.rates.tables() if self.rates is not None else []
            self.reads += 1
        assert self._tables is not None
        return self._history, self._tables


class Enricher:
    """Enriches landing batches (one per landing run: it keeps the user-agent cache)."""

    def __init__(
        self,
        reference: Reference,
        reporting_currency: str = "USD",
        enabled: bool = True,
        ua_cache_size: int = 100_000,
        ua_parse_budget: int = 20_000,
    ) -> None:
        self.reference = reference
        self.reporting_currency = reporting_currency
        self.enabled = enabled
        self.ua_parse_budget = ua_parse_budget
        self.user_agents = useragent.UserAgents(ua_cache_size)
        self.seconds: Counter[str] = Counter()  # CPU s per enrichment over the run (bench)

    def enrich(self, table: pa.Table) -> pa.Table:
        """The rows as landed: the enriched columns appended (replaced, when the table has
        them already), ``ip`` anonymised, and last ``event_bytes``, the size of the row as
        sent, measured after the anonymisation (the row the lake and ClickHouse keep)."""
        derived = {f.name for f in ENRICHED_FIELDS} | {EVENT_BYTES_FIELD.name}
        table = table.drop_columns([name for name in table.column_names if name in derived])
        n = table.num_rows
        counts: Counter[str] = Counter(rows=n)
        clock = _Clock(self.seconds)
        received = _epoch_ms(table.column("received_ts"))
        history, tables = self.reference.for_batch(int(received.max()) if n else 0)
        customer = table.column("customer_id").combine_chunks()
        groups, group_of_row = _setting_groups(customer, received, history)
        clock("prepare")

        columns: dict[str, pa.Array] = {}
        ip = table.column("ip").combine_chunks()
        if self.enabled:
            columns.update(self._user_agent(table, counts))
            clock("user_agent")
            columns["geo_country"] = self._geo(ip, counts)
            clock("geo")
        crashpoint("during_enrichment")  # the crash tests: killed with the batch half enriched
        anonymised, modes = self._anonymise(ip, groups, group_of_row, counts)
        columns["ip_mode"] = modes
        clock("ip")
        if self.enabled:
            columns.update(self._campaign(table.column("url").combine_chunks()))
            clock("campaign")
            columns.update(self._referrer(table, customer, columns, groups, group_of_row, counts))
            clock("referrer")
            columns.update(self._currency(table, received, tables, counts))
            clock("currency")
            columns["enrich_version"] = self._versions(received, tables)
        else:
            columns["enrich_version"] = pa.array([f"{ipanon.VERSION} only"] * n, pa.string())

        out = table.set_column(table.schema.get_field_index("ip"), "ip", anonymised)
        for field in ENRICHED_FIELDS:
            column = columns.get(field.name)
            if column is None:
                column = pa.nulls(n, field.type)
            out = out.append_column(field, column)
        counts["bots"] = int(pc.sum(columns["is_bot"]).as_py() or 0) if "is_bot" in columns else 0
        meta = {
            "counts": dict(sorted(counts.items())),
            "versions": self.versions(tables),
            "enabled": self.enabled,
        }
        out = with_event_bytes(out)
        clock("assemble")
        return out.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})

    # -- each enrichment ---------------------------------------------------------------

    def _user_agent(self, table: pa.Table, counts: Counter[str]) -> dict[str, pa.Array]:
        encoded = pc.dictionary_encode(table.column("user_agent").combine_chunks())
        distinct = encoded.dictionary.to_pylist()
        indices = encoded.indices
        parse = range(len(distinct))
        if len(distinct) > self.ua_parse_budget:
            # A flood of distinct strings (junk, one per event) is not parsed past the budget;
            # the most frequent strings are, so real browsers keep their fields. A function
            # of the batch alone: a replay parses the same ones.
            freq = np.bincount(indices.fill_null(-1).to_numpy() + 1, minlength=len(distinct) + 1)
            order = np.argsort(-freq[1:], kind="stable")
            parse = sorted(order[: self.ua_parse_budget].tolist())
            skipped = np.ones(len(distinct), dtype=bool)
            skipped[parse] = False
            counts["ua_skipped"] += int(freq[1:][skipped].sum())
        results: list[useragent.Parsed] = [useragent.NOTHING] * len(distinct)
        failed = np.zeros(len(distinct), dtype=np.int64)
        for i in parse:
            results[i], bad = self.user_agents.parse(distinct[i])
            failed[i] = bad
        if len(distinct):
            per_value = np.bincount(indices.drop_null().to_numpy(), minlength=len(distinct))
            counts["ua_unknown"] += int((per_value * failed).sum())
        names = (
            "ua_browser",
            "ua_browser_major",
            "ua_os",
            "ua_os_version",
            "ua_device",
            "device_class",
            "is_bot",
            "bot_reason",
        )
        out = {}
        for j, name in enumerate(names):
            values = pa.array([r[j] for r in results], pa.bool_() if j == 6 else pa.string())
            out[name] = pc.take(values, indices)
        # No user agent: the device class the sender gave (desktop, mobile, tablet, ctv).
        device = table.column("device").combine_chunks()
        sent = pc.if_else(
            pc.fill_null(pc.is_in(device, value_set=DEVICE_CLASSES), False),
            device,
            pa.scalar(None, pa.string()),
        )
        out["device_class"] = pc.coalesce(out["device_class"], sent)
        out["is_bot"] = pc.fill_null(out["is_bot"], False)
        return out

    def _geo(self, ip: pa.Array, counts: Counter[str]) -> pa.Array:
        encoded = pc.dictionary_encode(ip)
        # ::ffff:a.b.c.d is the IPv4 address a.b.c.d (the database keys it as IPv4)
        plain = pc.replace_substring_regex(
            encoded.dictionary, r"^::[fF]{4}:([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)$", r"\1"
        )
        found = pa.array(geo.countries(plain.to_pylist()), pa.string())
        country = pc.take(found, encoded.indices)
        counts["geo_unknown"] += int(
            pc.sum(pc.and_(pc.is_valid(ip), pc.is_null(country))).as_py() or 0
        )
        return country

    def _anonymise(
        self,
        ip: pa.Array,
        groups: list[tuple[str, int, str, bytes, tuple[str, ...]]],
        group_of_row: np.ndarray,
        counts: Counter[str],
    ) -> tuple[pa.Array, pa.Array]:
        """Truncated for every distinct address at once (IPv4 in Arrow, the rest in Python);
        the rows of customers that keep or hash then take their own values."""
        encoded = pc.dictionary_encode(ip)
        distinct = encoded.dictionary
        truncated, valid = ipanon.truncate_all(distinct)
        index = encoded.indices.fill_null(-1).to_numpy() + 1  # 0: no address
        invalid = np.concatenate([[False], ~valid])
        counts["ip_invalid"] += int(invalid[index].sum())
        out = pc.take(truncated, encoded.indices)
        modes = np.array([g[2] for g in groups] or ["truncate"])
        if (modes == "keep").any():
            keeping = np.isin(group_of_row, np.flatnonzero(modes == "keep"))
            out = pc.if_else(pa.array(keeping), ip, out)
        if (modes == "hash").any():
            hashing = np.isin(group_of_row, np.flatnonzero(modes == "hash"))
            width = len(distinct) + 1
            keys = np.where(hashing, group_of_row.astype(np.int64) * width + index, 0)
            unique, inverse = np.unique(keys, return_inverse=True)
            texts = distinct.to_pylist()
            values: list[str | None] = []
            for key in unique.tolist():
                group, value = divmod(key, width)
                salt = groups[group][3]
                values.append(None if value == 0 else ipanon.hashed(texts[value - 1], salt))
            hashed = pc.take(pa.array(values, pa.string()), pa.array(inverse.reshape(-1)))
            out = pc.if_else(pa.array(hashing), hashed, out)
        row_mode = pc.take(pa.array(modes.tolist(), pa.string()), pa.array(group_of_row))
        return out, row_mode

    def _campaign(self, url: pa.Array) -> dict[str, pa.Array]:
        encoded = pc.dictionary_encode(url)
        found = campaign.parameters(encoded.dictionary)
        return {name: pc.take(values, encoded.indices) for name, values in found.items()}

    def _referrer(self, table, customer, columns, groups, group_of_row, counts):
        raw = table.column("referrer").combine_chunks()
        encoded = pc.dictionary_encode(raw)
        host = pc.take(referrer.hosts(encoded.dictionary), encoded.indices)
        given = pc.fill_null(pc.greater(pc.utf8_length(raw), 0), False)
        counts["referrer_unparsed"] += int(pc.sum(pc.and_(given, pc.is_null(host))).as_py() or 0)
        click_id = pc.or_(pc.is_valid(columns["gclid"]), pc.is_valid(columns["fbclid"]))
        internal = [
            (group_of_row == g, domains) for g, (*_, domains) in enumerate(groups) if domains
        ]
        cls = referrer.classify(host, columns["utm_medium"], click_id, internal)
        return {"referrer_host": host, "referrer_class": cls}

    def _currency(self, table, received, tables, counts) -> dict[str, pa.Array]:
        n = table.num_rows
        cur = table.column("currency").combine_chunks()
        encoded = pc.dictionary_encode(cur)
        codes = encoded.dictionary.to_pylist()
        code_of_row = encoded.indices.fill_null(-1).to_numpy()
        day = _epoch_ms(table.column("event_ts")) // MS_PER_DAY
        table_of_row = currency.rates_at(tables, received) if tables else np.full(n, -1)
        rate = np.full(n, np.nan)
        unknown = no_rate = 0
        for ti in np.unique(table_of_row).tolist():
            in_table = table_of_row == ti
            for ci, code in enumerate(codes):
                rows = np.flatnonzero(in_table & (code_of_row == ci))
                if not len(rows):
                    continue
                if code == self.reporting_currency:
                    rate[rows] = 1.0
                    continue
                series = tables[ti].by_currency.get(code) if ti >= 0 else None
                if series is None:
                    unknown += len(rows)
                    continue
                at = np.searchsorted(np.array(series[0]), day[rows], side="right") - 1
                known = at >= 0
                rate[rows[known]] = np.array(series[1])[at[known]]
                no_rate += int((~known).sum())
        counts["fx_unknown_currency"] += unknown
        counts["fx_no_rate"] += no_rate
        fx = pa.array(rate, pa.float64(), mask=np.isnan(rate))
        out = {
            "reporting_currency": pc.if_else(
                pc.is_valid(fx), pa.scalar(self.reporting_currency), pa.scalar(None, pa.string())
            ),
            "fx_rate": fx,
        }
        for name in ("amount", "cost", "revenue"):
            out[f"{name}_reporting"] = pc.multiply(table.column(name).combine_chunks(), fx)
        return out

    # -- versions ----------------------------------------------------------------------

    def versions(self, tables: list[Rates]) -> dict[str, str]:
        return {
            "user_agent": f"{useragent.VERSION}+{bots.VERSION} ({useragent.RULES_VERSION})",
            "geo": f"{geo.VERSION} ({geo.DATABASE_VERSION})",
            "ip": ipanon.VERSION,
            "campaign": campaign.VERSION,
            "referrer": referrer.VERSION,
            "currency": f"{currency.VERSION} ({self.reporting_currency}; "
            + (", ".join(t.name for t in tables) or "no rates")
            + ")",
        }

    def _versions(self, received: np.ndarray, tables: list[Rates]) -> pa.Array:
        """Per row: the code and reference data versions (the rates table may differ)."""
        v = self.versions([])
        base = "; ".join(f"{v[k]}" for k in ("user_agent", "geo", "ip", "campaign", "referrer"))
        fx = f"{currency.VERSION} {self.reporting_currency}"
        names = [f"{base}; {fx} no rates"] + [f"{base}; {fx} {t.name}" for t in tables]
        index = (currency.rates_at(tables, received) if tables else np.full(len(received), -1)) + 1
        return pc.take(pa.array(names, pa.string()), pa.array(index))


def enricher_from_settings(settings: Settings) -> Enricher:
    """The platform's enricher: customers' settings from customers.sqlite, rates from
    ``rates_dir``."""
    e = settings.enrich
    reference = Reference(
        SettingsStore(settings.customers_db, e.change_delay_s),
        RatesStore(settings.rates_dir, e.reporting_currency, e.change_delay_s),
    )
    return Enricher(
        reference,
        reporting_currency=e.reporting_currency,
        enabled=e.enabled,
        ua_cache_size=e.ua_cache_size,
        ua_parse_budget=e.ua_parse_budget,
    )


def _setting_groups(
    customer: pa.Array, received: np.ndarray, history: SettingsHistory
) -> tuple[list[tuple[str, int, str, bytes, tuple[str, ...]]], np.ndarray]:
    """The (customer, setting in effect) groups of the batch, and each row's group."""
    encoded = pc.dictionary_encode(customer)
    names = encoded.dictionary.to_pylist()
    of_row = encoded.indices.to_numpy(zero_copy_only=False)
    group_of_row = np.zeros(len(customer), dtype=np.int32)
    groups: list[tuple[str, int, str, bytes, tuple[str, ...]]] = []
    for ci, name in enumerate(names):
        rows = np.flatnonzero(of_row == ci)
        versions = history.versions(name)
        starts = np.array([v.effective_ms for v in versions], dtype=np.int64)
        which = np.searchsorted(starts, received[rows], side="right") - 1
        for vi in np.unique(which).tolist():
            s = history.at(name, -1) if vi < 0 else versions[vi]
            group_of_row[rows[which == vi]] = len(groups)
            groups.append((name, vi, s.ip_mode, s.salt, s.internal_domains))
    return groups, group_of_row


def _epoch_ms(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    ms = pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64())
    return ms.to_numpy(zero_copy_only=False)


def enrichment_counts(table: pa.Table) -> dict[str, object]:
    """What :meth:`Enricher.enrich` recorded on a batch's table (empty when not enriched)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


class _Clock:
    """CPU seconds per enrichment (process time: on a shared machine, wall time measures the
    neighbours)."""

    def __init__(self, seconds: Counter[str]) -> None:
        self.seconds, self.last = seconds, time.process_time()

    def __call__(self, name: str) -> None:
        now = time.process_time()
        self.seconds[name] += now - self.last
        self.last = now
