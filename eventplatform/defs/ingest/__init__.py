"""Ingest: the Kafka topics, the landing runs, the sensors that start them, and the landed
assets (lake, ClickHouse, dead letters) each landing micro-batch updates."""
