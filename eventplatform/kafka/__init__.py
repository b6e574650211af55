"""Kafka: the local broker, topics as code, and client configuration (confluent-kafka)."""
