"""Settings written back as a TOML file (the config module reads TOML; the standard library writes none)."""

from __future__ import annotations

import json


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dump_toml(settings) -> str:
    """The settings as a TOML file that load_settings reads back to equal settings (to hand to workers)."""
    data = settings.model_dump(exclude_none=True)
    lines = []
    for section in ("kafka", "topics", "batch", "runtime", "telemetry", "deploy"):
        lines.append(f"[{section}]")
        for k, v in data[section].items():
            if not (isinstance(v, dict) and not v):
                lines.append(f"{k} = {_toml_value(v)}")
    for arr in ("intents", "tenants"):
        for item in data[arr]:
            lines.append(f"[[{arr}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if not (isinstance(v, dict) and not v)]
    return "\n".join(lines) + "\n"
