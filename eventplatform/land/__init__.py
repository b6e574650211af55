"""Landing: Kafka micro-batches into the Parquet lake and ClickHouse, exactly once in effect."""
