"""The engine: everything that talks to Kafka, and nothing about scoring.

clients.py builds client configs from settings; producer.py is the one output producer every writer uses;
checkpoint.py begins, commits and aborts (exactly-once or at-least-once) and classifies errors; loop.py is
the stream loop that a job hands its process(batch) to; topics.py, table.py and ranges.py create and read
topics; local.py runs the development broker. May import: errors, config.
"""
