"""Scoring a micro-batch: the event contract (parse_event), routing to (intent, version), the batch scorer
that turns input messages into decisions and dead letters, and shadow scoring. No Kafka I/O of its own.

May import: errors, config, kafka (records and configs only), models, tenants.
"""
