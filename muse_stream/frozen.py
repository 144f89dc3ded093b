"""The base of every settings model (config, bands, deployment guards, entity state): frozen, no unknown keys,
and every scalar the type it is written as."""

from __future__ import annotations

import typing

from pydantic import BaseModel, ConfigDict, field_validator

_FLAG = "true or false"
_KIND = {int: "a number", float: "a number", int | None: "a number", float | None: "a number", bool: _FLAG}


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _as_written(cls, v, info):
        """pydantic would read `max_events = true` as 1, `max_wait_ms = "50"` as 50 and a pinned version "3" as
        3, hiding a mistake: a number stays a number (an int is fine for a float), a flag is true or false."""
        ann = cls.model_fields[info.field_name].annotation
        if typing.get_origin(ann) is dict and typing.get_args(ann)[1] is int and isinstance(v, dict):
            bad = next((x for x in v.values() if type(x) is not int), None)
            if bad is not None:
                raise ValueError(f"values must be whole numbers, not {type(bad).__name__} {bad!r}")
            return v
        kind = _KIND.get(ann)
        if type(v) is not bool if kind == _FLAG else kind and (type(v) is bool or isinstance(v, str)):
            raise ValueError(f"must be {kind}, not {type(v).__name__} {v!r}")
        return v
