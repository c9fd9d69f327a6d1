"""Development and demonstration tools: the local Kafka-protocol broker, a local Tiled server,
the operando demo."""
