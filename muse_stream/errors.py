"""The one error hierarchy of muse-stream. Every error a user can cause or meet derives from MuseError."""


class MuseError(Exception):
    """Root of every muse-stream error; the CLI prints these as one line and exits non-zero."""


class ConfigError(MuseError):
    """A configuration file or value is invalid."""


class BrokerError(MuseError):
    """The local broker could not be fetched, started, reached or stopped."""


class KafkaOpError(MuseError):
    """A Kafka operation failed (admin, produce, transaction)."""

    def __init__(self, message: str, *, code: int | None = None, description: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.description = description


class FatalKafkaError(KafkaOpError):
    """A fatal client error: the worker must close and exit non-zero."""


class TransformError(MuseError):
    """A score transform cannot be fitted, loaded or applied."""


class NotFittedError(TransformError):
    """A transform was used before fit."""


class ModelError(MuseError):
    """A model version is unknown, invalid or refused."""


class DataError(MuseError):
    """An input data file (calibration, labels, dataset) is missing or malformed."""
