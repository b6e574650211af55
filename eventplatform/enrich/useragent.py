"""User agent -> browser, OS, device and device class, with ua-parser's published rules.

``ua-parser`` with ``ua-parser-builtins`` (the uap-core regexes, versioned by release) and its
native accelerator ``ua-parser-rs`` (Rust regexes: about 40 us a string against about 3 ms for
the pure-Python resolver on this machine). User agents repeat (a few hundred strings make most
of a day's traffic), so each distinct string is parsed once and remembered.
"""

from __future__ import annotations

from importlib.metadata import version

from eventplatform.enrich.bots import bot_reason

VERSION = "ua-1"
RULES_VERSION = f"ua-parser-builtins {version('ua-parser-builtins')}"
MAX_CHARS = 1024  # longer strings are parsed by their first MAX_CHARS characters

# (browser, browser_major, os, os_version, device, device_class, is_bot, bot_reason)
Parsed = tuple[
    str | None, str | None, str | None, str | None, str | None, str | None, bool, str | None
]
NOTHING: Parsed = (None, None, None, None, None, None, False, None)

MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "HarmonyOS", "Tizen"}
DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "FreeBSD"}
TABLET_DEVICES = ("ipad", "tablet", "kindle", "sm-t", "nexus 7", "nexus 9", "galaxy tab")


def _make_parser():
    from ua_parser import Parser, load_builtins

    try:  # the native accelerator: same rules, Rust regexes
        from ua_parser.regex import Resolver
    except ImportError:  # pragma: no cover - the pure-Python resolver, 70x slower
        from ua_parser import BasicResolver as Resolver
    return Parser(Resolver(load_builtins()))


def device_class(ua: str, os_family: str | None, device_family: str | None) -> str | None:
    """desktop, mobile or tablet from the OS and device; None when nothing says."""
    lower = ua.lower()
    device = (device_family or "").lower()
    if any(t in device for t in TABLET_DEVICES) or "ipad" in lower or "tablet" in lower:
        return "tablet"
    if os_family == "Android" and "mobile" not in lower:
        return "tablet"  # Android phones send "Mobile"; tablets do not (Google's guidance)
    if os_family in MOBILE_OS or "mobi" in lower:
        return "mobile"
    if os_family in DESKTOP_OS:
        return "desktop"
    return None


def _version(major: str | None, minor: str | None) -> str | None:
    return ".".join(p for p in (major, minor) if p) or None


class UserAgents:
    """Parses user agents, each distinct string once (a bounded cache, cleared when full)."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self._parser = None  # built at the first string (about a second: the rules compile)
        self._cache: dict[str, Parsed] = {}
        self.cache_size = cache_size

    def warm_up(self) -> None:
        """Compile the rules now (a landing run's warm-up), not in its first batch's time."""
        if self._parser is None:
            self._parser = _make_parser()

    def parse(self, ua: str) -> tuple[Parsed, bool]:
        """The parsed fields, and whether the string failed to parse (no exception escapes)."""
        hit = self._cache.get(ua)
        if hit is not None:
            return hit, hit[0] is None and not hit[6]
        parsed, failed = self._parse(ua)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[ua] = parsed
        return parsed, failed

    def _parse(self, ua: str) -> tuple[Parsed, bool]:
        text = ua[:MAX_CHARS]
        if not text.strip():
            return NOTHING, True
        if self._parser is None:
            self._parser = _make_parser()
        try:
            result = self._parser.parse(text)
        except Exception:  # a rule engine error on junk: nulls and a count, never a stop
            return NOTHING, True
        agent, os, device = result.user_agent, result.os, result.device
        device_family = device.family if device else None
        reason = bot_reason(text, device_family)
        browser = agent.family if agent and agent.family != "Other" else None
        os_family = os.family if os and os.family != "Other" else None
        parsed: Parsed = (
            browser,
            agent.major if browser and agent else None,
            os_family,
            _version(os.major, os.minor) if os_family and os else None,
            device_family if device_family != "Other" else None,
            "bot" if reason else device_class(text, os_family, device_family),
            reason is not None,
            reason,
        )
        return parsed, browser is None and reason is None
