"""Realistic traffic: many customers, a diurnal curve, peaks, hot customers, funnels, ads.

The generator is deterministic for a seed, knows nothing of HTTP or Kafka, and labels every
event it makes (``normal``, ``anomaly:<kind>``, ``bad:<kind>``) so that tests and
`eventplatform reconcile` can check what the platform did with each. Labels never go into
the event itself: the contract rejects unknown fields.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

AD_NETWORK = "ad_network"
PRODUCT = "product"

# Share of ad-event draws by type: CTR about 2.6 %, conversions about 0.9 % of impressions.
AD_MIX = (("bid", 0.40), ("impression", 0.58), ("ad_click", 0.015), ("conversion", 0.005))
# Funnel of a product session: the chance to go on to the next step.
FUNNEL = (("page_view", 1.0), ("click", 0.45), ("signup", 0.25), ("purchase", 0.4))
# What browsers send, by share of traffic (desktop and mobile browsers of 2026, a few
# crawlers and scripts): the enrichment's user-agent parser, bot flag and device class.
USER_AGENTS = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        20,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
        6,
    ),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", 4),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/18.1 Safari/605.1.15",
        7,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/131.0.0.0 Safari/537.36",
        6,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        2,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        18,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
        5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
        9,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
        5,
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        3,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1",
        4,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        1,
    ),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 2),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 1),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", 1),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/131.0.0.0 Safari/537.36",
        1,
    ),
    ("python-requests/2.32.3", 1),
)
# Public networks of several countries (first octets and a second-octet range); the last
# octet varies per user. Private and documentation addresses appear too (no country).
PUBLIC_NETWORKS = (
    (8, 8),
    (24, 30),
    (31, 13),
    (46, 101),
    (51, 15),
    (62, 210),
    (77, 88),
    (81, 2),
    (88, 198),
    (91, 198),
    (101, 53),
    (103, 21),
    (121, 0),
    (133, 11),
    (151, 80),
    (177, 44),
    (185, 60),
    (190, 12),
    (196, 20),
    (200, 147),
    (203, 208),
    (212, 58),
)
REFERRERS = (  # where a session comes from, by share
    (None, 35),
    ("https://www.google.com/search?q=shop", 25),
    ("https://www.google.co.uk/", 5),
    ("https://www.bing.com/search?q=deals", 4),
    ("https://duckduckgo.com/", 3),
    ("https://l.facebook.com/l.php?u=x", 6),
    ("https://t.co/AbCdEf", 3),
    ("https://www.reddit.com/r/deals/", 2),
    ("https://mail.google.com/mail/u/0/", 3),
    ("https://news.example.org/article/42", 8),
    ("not a url", 1),
)
CAMPAIGNS = (  # a session's landing query (UTM parameters, click ids), by share
    ("", 60),
    ("?utm_source=google&utm_medium=cpc&utm_campaign=winter_sale&gclid=Cj0KCQiA", 12),
    ("?utm_source=facebook&utm_medium=paid_social&utm_campaign=retarget&fbclid=IwAR3x", 8),
    ("?utm_source=newsletter&utm_medium=email&utm_campaign=weekly%2042&utm_content=hero", 10),
    ("?utm_source=partner+blog&utm_medium=referral&utm_term=running%20shoes", 5),
    ("?utm_source=&utm_medium=&broken=%zz%", 1),
)
PURCHASE_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "EUR", "CHF")
BAD_KINDS = (
    "missing_type",
    "unknown_type",
    "wrong_type",
    "unknown_field",
    "bad_timestamp",
    "not_an_object",
)


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    advertiser: str  # the customer that runs it
    pricing_model: str  # CPM | CPC | CPA
    price: float  # per thousand impressions (CPM), per click (CPC), per conversion (CPA)
    daily_budget: float
    total_budget: float
    currency: str = "USD"

    def cost_of(self, event_type: str) -> float:
        charged = {"CPM": "impression", "CPC": "ad_click", "CPA": "conversion"}[self.pricing_model]
        if event_type != charged:
            return 0.0
        return self.price / 1000 if self.pricing_model == "CPM" else self.price


@dataclass(frozen=True)
class Customer:
    customer_id: str
    kind: str  # ad_network | product
    weight: float  # relative share of traffic
    sites: tuple[str, ...]
    campaigns: tuple[Campaign, ...] = ()


@dataclass
class SimulatedEvent:
    customer_id: str
    event: Any  # the JSON a sender posts (a dict, or garbage for bad:not_an_object)
    label: str = "normal"

    @property
    def event_type(self) -> str:
        return self.event.get("event_type", "?") if isinstance(self.event, dict) else "?"


@dataclass
class TrafficSpec:
    seed: int = 7
    customers: int = 8
    hot_customers: int = 2  # these take most of the traffic (Zipf-like weights)
    campaigns_per_advertiser: int = 4
    bad_rate: float = 0.0  # share of events made invalid on purpose
    anomalies: bool = False  # a spike and a click-fraud burst
    day_seconds: float = 86_400.0  # compress a day to see the diurnal curve in a short run
    peak_every_s: float = 600.0  # a peak of ten times the average this often...
    peak_length_s: float = 30.0  # ...lasting this long
    low_budgets: bool = False  # budgets small enough to run out within a demo


@dataclass
class _Session:
    customer: Customer
    user_id: str
    session_id: str
    step: int = 0
    landing: str = ""  # the first page's query: UTM parameters and click ids
    referrer: str | None = None  # where the session came from
    last_url: str | None = None


@dataclass(frozen=True)
class _Visitor:
    user_agent: str
    ip: str


def _weighted(rng: random.Random, table: tuple) -> Any:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


class TrafficGenerator:
    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.customers = self._make_customers()
        self._weights = [c.weight for c in self.customers]
        self._sessions: dict[str, list[_Session]] = {
            c.customer_id: [] for c in self.customers if c.kind == PRODUCT
        }
        self.sent = Counter()  # (customer, event_type, label) -> events made
        # The web side (user agents, IPs, referrers, UTM) draws from its own generator, so the
        # rest of the traffic is what it was for a seed before these fields existed.
        self.web_rng = random.Random(spec.seed * 7919 + 1)
        self._visitors: dict[str, _Visitor] = {}

    # -- the population ------------------------------------------------------------------
    def _make_customers(self) -> list[Customer]:
        rng, spec = self.rng, self.spec
        customers = []
        for i in range(spec.customers):
            kind = AD_NETWORK if i % 2 == 0 else PRODUCT
            name = f"{'adnet' if kind == AD_NETWORK else 'app'}-{i:02d}"
            weight = 10.0 / (i + 1) if i < spec.hot_customers else 1.0 / (i + 1)
            sites = tuple(f"{name}-site-{j}" for j in range(3))
            campaigns: tuple[Campaign, ...] = ()
            if kind == AD_NETWORK:
                campaigns = tuple(
                    self._campaign(name, j, rng) for j in range(spec.campaigns_per_advertiser)
                )
            customers.append(Customer(name, kind, weight, sites, campaigns))
        return customers

    def _campaign(self, advertiser: str, j: int, rng: random.Random) -> Campaign:
        model = ("CPM", "CPC", "CPA")[j % 3]
        price = {"CPM": 2.5, "CPC": 0.4, "CPA": 5.0}[model]
        daily = (
            rng.choice((5.0, 10.0, 50.0))
            if self.spec.low_budgets
            else rng.choice((500.0, 1000.0, 5000.0))
        )
        return Campaign(f"{advertiser}-cmp-{j}", advertiser, model, price, daily, daily * 30)

    @property
    def campaigns(self) -> list[Campaign]:
        return [c for customer in self.customers for c in customer.campaigns]

    # -- the rate ------------------------------------------------------------------------
    def rate_multiplier(self, t_s: float) -> float:
        """Relative rate at simulated second ``t_s``: a diurnal curve times periodic peaks.

        The curve has its trough at 04:00 and its top at 16:00 (0.3x to 1.7x, mean 1); a peak
        multiplies the average by ten.
        """
        day_fraction = (t_s % self.spec.day_seconds) / self.spec.day_seconds
        diurnal = 1.0 - 0.7 * math.cos(2 * math.pi * (day_fraction - 4 / 24))
        in_peak = (t_s % self.spec.peak_every_s) < self.spec.peak_length_s
        return 10.0 if in_peak else diurnal

    # -- events --------------------------------------------------------------------------
    def events(self, n: int, now_ms: int, t_s: float = 0.0) -> list[SimulatedEvent]:
        """``n`` events happening around ``now_ms`` (simulated second ``t_s`` of the run)."""
        out = []
        chosen = self.rng.choices(self.customers, weights=self._weights, k=n)
        for customer in chosen:
            event = (
                self._ad_event(customer, now_ms)
                if customer.kind == AD_NETWORK
                else self._product_event(customer, now_ms)
            )
            out.append(event)
        if self.spec.anomalies:
            out.extend(self._anomalies(now_ms, t_s, n))
        if self.spec.bad_rate:
            for i, event in enumerate(out):
                if self.rng.random() < self.spec.bad_rate:
                    out[i] = self._spoil(event)
        for event in out:
            self.sent[(event.customer_id, event.event_type, event.label)] += 1
        return out

    def _envelope(self, event_type: str, now_ms: int, payload: dict, **extra: Any) -> dict:
        jitter = self.rng.randint(0, 2000)  # senders' clocks and queues
        return {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "event_type": event_type,
            "event_ts": now_ms - jitter,
            "source": "simulator",
            "payload": payload,
            **extra,
        }

    def _ad_event(
        self,
        customer: Customer,
        now_ms: int,
        label: str = "normal",
        event_type: str | None = None,
        ip: str | None = None,
        campaign: Campaign | None = None,
    ) -> SimulatedEvent:
        rng = self.rng
        if event_type is None:
            event_type = rng.choices([t for t, _ in AD_MIX], weights=[w for _, w in AD_MIX])[0]
        campaign = campaign or rng.choice(customer.campaigns)
        site = rng.choice(customer.sites)
        user = f"{customer.customer_id}-viewer-{rng.randrange(50_000)}"
        common = {
            "campaign_id": campaign.campaign_id,
            "site_id": site,
            "publisher_id": f"pub-{site.rsplit('-', 1)[-1]}",
            "currency": campaign.currency,
        }
        if event_type == "bid":
            payload = {
                **common,
                "bid_price": round(rng.uniform(0.5, 4.0), 4),
                "won": rng.random() < 0.3,
            }
        else:
            cost = campaign.cost_of(event_type)
            payload = {
                **common,
                "ad_id": f"{campaign.campaign_id}-ad-{rng.randrange(3)}",
                "pricing_model": campaign.pricing_model,
                "cost": cost,
                "revenue": round(cost * 0.7, 6),
            }
            if event_type == "conversion":
                payload["value"] = round(rng.uniform(10, 200), 2)
        drawn = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        visitor = self._visitor(user)
        event = self._envelope(
            event_type,
            now_ms,
            payload,
            user_id=user,
            ip=ip or visitor.ip if ip or self.web_rng.random() > 0.02 else drawn,
            user_agent=visitor.user_agent,
            device=rng.choice(("desktop", "mobile", "mobile", "tablet")),
        )
        return SimulatedEvent(customer.customer_id, event, label)

    def _product_event(self, customer: Customer, now_ms: int) -> SimulatedEvent:
        rng = self.rng
        sessions = self._sessions[customer.customer_id]
        if len(sessions) < 50 or rng.random() < 0.05:
            user = f"{customer.customer_id}-user-{rng.randrange(20_000)}"
            web = self.web_rng
            sessions.append(
                _Session(
                    customer,
                    user,
                    f"s-{rng.getrandbits(48):012x}",
                    landing=_weighted(web, CAMPAIGNS),
                    referrer=_weighted(web, REFERRERS),
                )
            )
        session = rng.choice(sessions)
        event_type = FUNNEL[session.step][0]
        # Advance along the funnel, or stay browsing, or leave.
        if session.step + 1 < len(FUNNEL) and rng.random() < FUNNEL[session.step + 1][1]:
            session.step += 1
        elif event_type != "page_view" or rng.random() < 0.3:
            sessions.remove(session)
        site = customer.sites[0]
        page = f"https://{site}.example/p/{rng.randrange(500)}"
        first_page = session.last_url is None
        page_view = {
            "url": page + (session.landing if first_page else ""),
            "duration_ms": rng.randrange(200, 120_000),
        }
        referrer = session.referrer if first_page else session.last_url
        if referrer is not None:
            page_view["referrer"] = referrer
        if event_type == "page_view":
            session.last_url = page
        currency = PURCHASE_CURRENCIES[self.customers.index(customer) % len(PURCHASE_CURRENCIES)]
        if self.web_rng.random() < 0.002:
            currency = "XYZ"  # a sender's typo: no rate, the reporting columns stay null
        payloads = {
            "page_view": page_view,
            "click": {"url": f"https://{site}.example/cta", "element": "cta"},
            "signup": {"plan": rng.choice(("free", "pro")), "method": "email"},
            "purchase": {
                "order_id": f"o-{rng.getrandbits(40):010x}",
                "amount": round(rng.uniform(5, 300), 2),
                "currency": currency,
                "items": rng.randrange(1, 5),
            },
        }
        visitor = self._visitor(session.user_id)
        event = self._envelope(
            event_type,
            now_ms,
            payloads[event_type],
            user_id=session.user_id,
            session_id=session.session_id,
            ip=visitor.ip,
            user_agent=visitor.user_agent,
        )
        return SimulatedEvent(customer.customer_id, event)

    def _visitor(self, user_id: str) -> _Visitor:
        """A user's browser and address, the same at every event (a few share a NAT)."""
        visitor = self._visitors.get(user_id)
        if visitor is None:
            web = self.web_rng
            first, second = web.choice(PUBLIC_NETWORKS)
            ip = f"{first}.{second + web.randrange(4)}.{web.randrange(256)}.{web.randrange(1, 255)}"
            if web.random() < 0.01:
                ip = web.choice(("192.168.1.20", "2001:db8::7", "::1", "999.1.1.1"))
            elif web.random() < 0.05:
                ip = f"2a00:1450:{web.randrange(0x4000, 0x4030):x}::{web.randrange(1, 0xFFFF):x}"
            visitor = _Visitor(_weighted(web, USER_AGENTS), ip)
            if len(self._visitors) > 500_000:
                self._visitors.clear()
            self._visitors[user_id] = visitor
        return visitor

    def _anomalies(self, now_ms: int, t_s: float, n: int) -> list[SimulatedEvent]:
        """A spike of one customer (10x its share) and click fraud from one IP, in windows."""
        out: list[SimulatedEvent] = []
        if 60 <= t_s % 600 < 90:  # spike window
            victim = self.customers[-1]
            for _ in range(max(1, n // 10)):
                made = (
                    self._ad_event(victim, now_ms)
                    if victim.kind == AD_NETWORK
                    else self._product_event(victim, now_ms)
                )
                made.label = "anomaly:spike"
                out.append(made)
        if 120 <= t_s % 600 < 150:  # click fraud window
            fraudster = next(c for c in self.customers if c.kind == AD_NETWORK)
            for _ in range(max(1, n // 20)):
                out.append(
                    self._ad_event(
                        fraudster,
                        now_ms,
                        "anomaly:click_fraud",
                        event_type="ad_click",
                        ip="203.0.113.66",
                    )
                )
        return out

    def inject(
        self, kind: str, customer_id: str, n: int, now_ms: int, key: str | None = None
    ) -> list[SimulatedEvent]:
        """``n`` events of one labelled anomaly for one customer, around ``now_ms``.

        ``spike``: more of the customer's usual traffic; ``click_fraud``: ad clicks from the
        IP ``key``; ``hot_key``: events of the user or campaign ``key`` (a campaign id of
        the customer's, else a user id);
        ``bad_events``: events the collector rejects (a broken sender). A volume drop is an
        absence: leave out the customer's events (labelled in the run, not per event).
        """
        customer = next(c for c in self.customers if c.customer_id == customer_id)
        hot_campaign = next((c for c in customer.campaigns if c.campaign_id == key), None)

        def usual() -> SimulatedEvent:
            if customer.kind == AD_NETWORK:
                return self._ad_event(customer, now_ms)
            return self._product_event(customer, now_ms)

        out = []
        for _ in range(n):
            if kind == "click_fraud":
                made = self._ad_event(customer, now_ms, event_type="ad_click", ip=key)
            elif kind == "bad_events":
                made = self._spoil(usual())
            elif kind == "hot_key" and hot_campaign is not None:
                made = self._ad_event(customer, now_ms, campaign=hot_campaign)
            else:
                made = usual()
                if kind == "hot_key":
                    made.event["user_id"] = key
                elif kind != "spike":
                    raise ValueError(f"unknown anomaly kind {kind!r}")
            if not made.label.startswith("bad:"):
                made.label = f"anomaly:{kind}"
            self.sent[(made.customer_id, made.event_type, made.label)] += 1
            out.append(made)
        return out

    def _spoil(self, good: SimulatedEvent) -> SimulatedEvent:
        kind = self.rng.choice(BAD_KINDS)
        event = dict(good.event) if isinstance(good.event, dict) else {}
        if kind == "missing_type":
            event.pop("event_type", None)
        elif kind == "unknown_type":
            event["event_type"] = "teleport"
        elif kind == "wrong_type":
            event["event_ts"] = {"when": "now"}
        elif kind == "unknown_field":
            event["colour"] = "red"
        elif kind == "bad_timestamp":
            event["event_ts"] = "yesterday at noon"
        else:
            return SimulatedEvent(good.customer_id, ["not", "an", "object"], f"bad:{kind}")
        return SimulatedEvent(good.customer_id, event, f"bad:{kind}")


def campaigns_csv(
    campaigns: list[Campaign],
    start: str = "2026-01-01",
    end: str = "2027-12-31",
    timezone: str = "UTC",
) -> str:
    """The campaigns as the budgets loader reads them (`eventplatform campaigns load`); the
    owner, the customer whose events spend the budget, is the customer that runs it."""
    lines = ["advertiser,campaign_id,total_budget,daily_budget,currency,start,end,timezone,owner"]
    for c in campaigns:
        lines.append(
            f"{c.advertiser},{c.campaign_id},{c.total_budget:.2f},{c.daily_budget:.2f},"
            f"{c.currency},{start},{end},{timezone},{c.advertiser}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class Summary:
    """What a run sent, per customer, type and label: reconcilable with what landed."""

    counts: Counter = field(default_factory=Counter)

    def add(self, other: Counter) -> None:
        self.counts.update(other)

    def by_customer(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (customer, _event_type, label), n in self.counts.items():
            bucket = "bad" if label.startswith("bad:") else "good"
            out.setdefault(customer, {"good": 0, "bad": 0})[bucket] += n
        return out

    def total(self, good: bool | None = None) -> int:
        return sum(
            n
            for (_, _, label), n in self.counts.items()
            if good is None or label.startswith("bad:") != good
        )
