"""Traffic simulator: realistic, labelled events sent over HTTP or straight to Kafka."""
