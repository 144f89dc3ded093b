"""The demo: a seamless model update on the ULB card transactions, end to end through Kafka.
May import every layer below the command line."""
