"""`muse-stream bench`: throughput, latency and model-swap figures of the runtime against its Kafka ceiling.

load.py builds the synthetic stack (tenants, two intents' boosters, events) and pre-produces the input;
procs.py runs worker processes and measures them (pinning.py pins them for the scaling runs); ceiling.py is
the bytes-in, bytes-out loop (the throughput ceiling, and the latency runs' floor); readers.py reads the outputs
back (read_committed) and checks exactly-once; runs.py drives each run and suite.py the whole sequence;
figures.py reads the workers' own timers; stats.py, report.py and report_sections.py turn the figures into a
table and a JSON file. stages.py and telemetry_overhead.py time the scorer's stages and telemetry in process.

May import every layer below the command line.
"""
