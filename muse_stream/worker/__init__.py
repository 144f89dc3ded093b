"""The scoring job: runtime.py hands the scorer, registries, shadow and telemetry to the engine's stream
loop; supervisor.py runs N worker processes in one consumer group.

May import every layer below it: errors, config, logs, kafka, models, tenants, scoring, telemetry.
"""
