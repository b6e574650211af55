"""Landing: Kafka micro-batches into the Parquet lake and ClickHouse, exactly once in effect.

``lander.py`` is the loop; ``checkpoint.py`` the manifest of the batch in flight; ``sinks.py``
the lake and ClickHouse; ``spend.py`` the batch's spend (which budgets read); ``commit.py``
dead letters, the commit and Kafka's errors; ``report.py`` what a batch reports; ``fence.py``
the shard lock; ``sources.py`` builds a lander per shard from settings. Knows nothing of
Dagster (``eventplatform/defs`` wires it).
"""
