"""eventplatform: HTTP intake -> Kafka -> Parquet lake + ClickHouse, with Dagster on top."""

__version__ = "0.1.0"
