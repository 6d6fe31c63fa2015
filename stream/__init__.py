"""driftwatch service: Faust agents, Kafka and Redis I/O, model, monitoring, CLI."""

__version__ = "0.1.0"
