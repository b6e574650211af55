"""The bot flag: from the user agent, by two signals.

1. ``ua_spider``: ua-parser's rules classify the device as ``Spider`` (crawlers that say so:
   Googlebot, bingbot, AhrefsBot, ... the uap-core list, updated with ua-parser-builtins).
2. ``automation``: the string names an automation tool or HTTP library the rules leave as an
   ordinary browser or as nothing: headless browsers (HeadlessChrome, PhantomJS, Puppeteer,
   Playwright, Selenium), HTTP clients (curl, wget, python-requests, Go-http-client, okhttp,
   Java, axios, node-fetch, libwww-perl, Scrapy) and uptime probes. No person browses with
   these, and each is a common source of scripted traffic in web analytics.

Both are functions of the user agent alone, so a replay flags the same rows. Signals that
need state across events (an IP's rate, click timing) belong to the quality checks
(``click_fraud``), which see all batches; a batch's own rate would depend on how it was cut.
"""

from __future__ import annotations

import re

VERSION = "bots-1"
AUTOMATION = re.compile(
    r"headless|phantomjs|puppeteer|playwright|selenium|webdriver|python-requests|"
    r"python-urllib|python-httpx|aiohttp|\bcurl/|\bwget/|go-http-client|okhttp|^java/|"
    r"apache-httpclient|axios/|node-fetch|libwww-perl|scrapy|pingdom|uptimerobot|"
    r"statuscake|\bbot\b|crawler|spider",
    re.IGNORECASE,
)


def bot_reason(ua: str, device_family: str | None) -> str | None:
    """``ua_spider``, ``automation`` or None (a person's browser, as far as the UA says)."""
    if device_family == "Spider":
        return "ua_spider"
    if AUTOMATION.search(ua):
        return "automation"
    return None
