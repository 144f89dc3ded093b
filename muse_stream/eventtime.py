"""The one bound on event times that every part of muse-stream shares (events, band and activation times)."""

MAX_EVENT_TIME = 2**62  # epoch ms; beyond it an event time is garbage (and int64 arithmetic on it overflows)
