"""Exit codes a worker process ends with, read by the supervisor (kept apart so it need not import the worker)."""

FATAL_KAFKA_EXIT = 3  # a fatal Kafka error other than a fence: restarted with back-off
# Fenced by another holder of its slot: not restarted, or two runs of one slot would fence each other in turn
# until one gave up; `run` then exits with this code once its other workers are done.
FENCED_EXIT = 5
