"""Entity state: sliding-window features and de-duplication in RocksDB stores with Kafka changelogs."""
