"""Marts: the analytic marts as daily-partitioned assets (``assets.py``), when they are
built (``automation.py``), and the CLI's recorded backfill (``backfill.py``)."""
