"""The worked examples of docs/*.md that the command tests run: a `<!-- NAME-example: KEY ... -->` marker,
then a console block of `$ muse-stream ...` lines and the output lines after them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def example(doc: str, name: str, key: str) -> list[tuple[list[str], list[str]]]:
    """Each command of the example as (argv after `muse-stream`, the output lines printed under it)."""
    text = (DOCS / doc).read_text()
    m = re.search(rf"<!-- {re.escape(name)}-example: {re.escape(key)}\b.*?-->\n```\w*\n(.*?)```", text, re.DOTALL)
    assert m, f"no {name} example {key!r} in docs/{doc}"
    out: list[tuple[list[str], list[str]]] = []
    for line in m.group(1).splitlines():
        if line.startswith("$ muse-stream "):
            out.append((shlex.split(line[len("$ muse-stream "):]), []))
        elif line.startswith("$ "):
            out.append(([], []))  # a shell line such as `echo $?`: its output belongs to no command
        elif out:
            out[-1][1].append(line)
    return [(argv, lines) for argv, lines in out if argv]
