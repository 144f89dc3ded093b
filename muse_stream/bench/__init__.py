"""`muse-stream bench`: throughput, latency and model-swap figures of the runtime against its Kafka ceiling.

load.py builds the synthetic stack (tenants, two intents' boosters, events) and pre-produces the input;
procs.py runs worker processes and measures them; ceiling.py is the bytes-in, bytes-out loop; readers.py
reads the outputs back (read_committed) and checks exactly-once; runs.py drives each run; stats.py and
report.py turn the figures into a table and a JSON file. telemetry_overhead.py times telemetry in-process.

May import every layer below the command line.
"""
