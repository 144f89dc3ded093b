"""muse-stream: multi-tenant fraud scoring on Kafka with stable score scales across model updates."""

__version__ = "0.1.0"
