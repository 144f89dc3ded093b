"""The demo: a seamless model update on the ULB card transactions, end to end through Kafka."""
