"""Alerts: failed checks reach a webhook (plain JSON or Slack-style) and a log file.

An alert names the check, the asset, the evidence and a link to the Dagster run, so on-call
can act without opening five tools. A check that keeps failing alerts once per cooldown
(the repeats are counted), and a check that passes again after firing sends a "resolved".
State is one small JSON file, locked, so several processes share it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from eventplatform.quality.checks import CheckOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    check: str
    asset: str
    status: str  # firing | resolved
    severity: str
    summary: str
    evidence: list[str]
    metadata: dict[str, Any]
    run_url: str | None
    ts: str
    repeats: int = 0  # failures suppressed since the last alert of this check

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def as_slack(self) -> dict[str, Any]:
        icon = (
            ":white_check_mark:"
            if self.status == "resolved"
            else (":rotating_light:" if self.severity == "ERROR" else ":warning:")
        )
        title = f"{icon} [{self.status.upper()}] {self.check} on {self.asset}: {self.summary}"
        lines = "\n".join(f"• {e}" for e in self.evidence[:10])
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}}
        ]
        if lines:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": lines}})
        if self.run_url:
            blocks.append(
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": f"<{self.run_url}|Dagster run> · {self.ts}"}
                    ],
                }
            )
        return {"text": title, "blocks": blocks}


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None: ...


class LogFileSink:
    """One JSON line per alert, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(alert.as_json(), default=str) + "\n")


class WebhookSink:
    """POSTs the alert as JSON (``fmt="json"``) or as a Slack-compatible message."""

    def __init__(self, url: str, fmt: str = "json", timeout_s: float = 5.0) -> None:
        if fmt not in ("json", "slack"):
            raise ValueError(f"webhook format must be json or slack, got {fmt!r}")
        self.url, self.fmt, self.timeout_s = url, fmt, timeout_s

    def send(self, alert: Alert) -> None:
        body = alert.as_slack() if self.fmt == "slack" else alert.as_json()
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body, default=str).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            if response.status >= 300:
                raise RuntimeError(f"webhook answered {response.status}")


class AlertRouter:
    """Decides what to send (new, repeated after cooldown, resolved) and sends it."""

    def __init__(
        self, sinks: list[AlertSink], state_file: Path, cooldown: timedelta = timedelta(hours=1)
    ) -> None:
        self.sinks, self.state_file, self.cooldown = sinks, state_file, cooldown

    def route(
        self,
        outcome: CheckOutcome,
        asset: str,
        run_url: str | None = None,
        now: datetime | None = None,
    ) -> Alert | None:
        """The alert sent for this outcome, or None when nothing was due."""
        now = now or datetime.now(UTC)
        key = f"{asset}:{outcome.name}"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            entry = state.get(key)
            alert = None
            if not outcome.passed:
                due = entry is None or now - datetime.fromisoformat(entry["sent"]) >= self.cooldown
                if due:
                    alert = self._alert(
                        outcome, asset, "firing", run_url, now, entry["repeats"] if entry else 0
                    )
                    state[key] = {"sent": now.isoformat(), "repeats": 0}
                else:
                    entry["repeats"] += 1
            elif entry is not None:
                alert = self._alert(outcome, asset, "resolved", run_url, now, entry["repeats"])
                del state[key]
            if alert is not None:
                self._send(alert)
            self.state_file.write_text(json.dumps(state, indent=1))
            return alert

    @staticmethod
    def _alert(
        outcome: CheckOutcome,
        asset: str,
        status: str,
        run_url: str | None,
        now: datetime,
        repeats: int,
    ) -> Alert:
        return Alert(
            outcome.name,
            asset,
            status,
            outcome.severity,
            outcome.summary,
            outcome.evidence,
            outcome.metadata,
            run_url,
            now.isoformat(),
            repeats,
        )

    def _send(self, alert: Alert) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.send(alert)
            except (OSError, urllib.error.URLError, RuntimeError) as exc:
                errors.append(f"{type(sink).__name__}: {exc}")
                log.error("alert sink %s failed for %s: %s", type(sink).__name__, alert.check, exc)
        if errors and len(errors) == len(self.sinks):
            raise RuntimeError("no alert sink took the alert: " + "; ".join(errors))
