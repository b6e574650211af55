"""Quality: health and anomaly checks over landed events and Kafka, and alerts a human acts on."""
