"""Kafka plumbing: client configs, topics, transactional producer, and the local development broker."""
