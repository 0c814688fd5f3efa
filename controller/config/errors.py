"""How a problem is worded: a key path the technician can find in the file, and plain words.

Shared by the loader (section errors from pydantic) and the cross-section checks (schedule requests and
profile files are validated by pydantic too), so every error reads the same way.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """All problems found in a configuration file, each naming its key path."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  - {e}" for e in errors))


def key_path(loc: tuple[int | str, ...], data: object) -> str:
    """Render a pydantic location as ``devices[3](t04).unit_id``, skipping union tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                out += f"({node['id']})"
        elif isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # discriminated-union tag, not a key in the file
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def error_message(error: Any) -> str:
    """pydantic's message, phrased for someone editing a YAML file."""
    if error["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")
