"""Model versions: the score transform (posterior correction, quantile mapping), the models-topic records,
the registry workers score with, publishing to the models topic, and the publish lifecycle.

May import: errors, config, kafka.
"""
