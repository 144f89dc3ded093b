"""The one error hierarchy of muse-stream. Every error a user can cause or meet derives from MuseError."""

from __future__ import annotations


class MuseError(Exception):
    """Root of every muse-stream error; the CLI prints these as one line and exits non-zero."""


class ConfigError(MuseError):
    """A configuration file or value is invalid."""


class BrokerError(MuseError):
    """The local broker could not be fetched, started, reached or stopped."""


class KafkaOpError(MuseError):
    """A Kafka operation failed (admin, produce, transaction).

    When the failure came from the client, `error` keeps the confluent_kafka.KafkaError itself, so callers can
    ask it what to do (retriable, txn_requires_abort, fatal) instead of parsing its text.
    """

    def __init__(self, message: str, *, code: int | None = None, description: str = "", error=None) -> None:
        super().__init__(message)
        self.error = error
        self.code = code if code is not None or error is None else error.code()
        self.description = description or (error.str() if error is not None else "")

    @classmethod
    def wrap(cls, what: str, error) -> KafkaOpError:
        """`what: <librdkafka's text>`, keeping the KafkaError."""
        return cls(f"{what}: {error.str()}", error=error)

    @property
    def retriable(self) -> bool:
        return bool(self.error is not None and self.error.retriable())

    @property
    def txn_requires_abort(self) -> bool:
        return bool(self.error is not None and self.error.txn_requires_abort())

    @property
    def fatal(self) -> bool:
        return bool(self.error is not None and self.error.fatal())


class AbortRequired(KafkaOpError):
    """The abort signal: the open transaction must be aborted and the batch re-read from the committed offsets."""


class DeliveryError(AbortRequired):
    """A produced record was not delivered: nothing may be committed over it."""


class RecordTooLarge(KafkaOpError):
    """A record is larger than the producer may write (message.max.bytes)."""


class FatalKafkaError(KafkaOpError):
    """A fatal client error: the worker must close and exit non-zero."""


class StuckConsumerError(KafkaOpError):
    """The worker's consumer makes no progress while the group's input waits: the worker exits, to be
    restarted with new clients."""


class TransformError(MuseError):
    """A score transform cannot be fitted, loaded or applied."""


class NotFittedError(TransformError):
    """A transform was used before fit."""


class ModelError(MuseError):
    """A model version is unknown, invalid or refused."""


class DataError(MuseError):
    """An input data file (calibration, labels, dataset) is missing or malformed."""
