"""Errors of the streams layer."""


class StreamsError(RuntimeError):
    """Base class for topic, broker and source errors."""


class BrokerError(StreamsError):
    """The embedded broker could not start or does not answer."""


class SourceError(StreamsError):
    """A log file cannot be read as any supported format."""


class DeliveryError(StreamsError):
    """The broker did not acknowledge records a producer sent (after all its retries)."""
