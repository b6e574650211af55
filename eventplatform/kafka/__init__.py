"""Kafka: the local broker, topics as code, client configuration (confluent-kafka), lag."""
