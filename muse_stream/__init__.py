"""muse-stream: multi-tenant fraud scoring on Kafka with stable score scales across model updates.

The packages are layers; each imports only from the layers below it (tests/test_layers.py checks this):

    errors, config, logs      foundation: one error hierarchy, settings validated once, logging
    kafka/                    the engine: clients, one output producer, checkpoint, stream loop, topics
    models/, tenants          model versions and transforms; tenant records and their history
    scoring/                  the event contract, routing, the batch scorer, shadow scoring
    telemetry/, analysis/     metrics and status; backtests, replays and evaluation
    worker/                   the scoring job on the engine's loop, and the process supervisor
    bench/, demo/             the benchmark and the demo
    commands/, cli            the command line
"""

__version__ = "0.1.0"
