"""The collector: HTTP event intake into Kafka with per-customer keys and quotas."""
