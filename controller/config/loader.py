"""Reading a configuration file: YAML, then every section, then the cross-section rules.

A technician learns every mistake in one run: section errors (from pydantic) all together, else
the cross-section errors (checks.py) all together, each with its key path.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.config.checks import cross_check
from controller.config.errors import ConfigError, error_message, key_path
from controller.config.root import Config


def parse_config(data: object, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate a loaded YAML document; raises ConfigError listing every problem.

    ``base`` is the directory relative paths in it (profiles, key and certificate files) start from.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{key_path(e['loc'], data)}: {error_message(e)}" for e in exc.errors()]
        raise ConfigError(source, problems) from None
    errors, profiles = cross_check(cfg, base or Path.cwd())
    if errors:
        raise ConfigError(source, errors)
    cfg._profiles = profiles
    return cfg


def load_config(path: str | Path) -> Config:
    """Read, validate and cross-check a configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    cfg = parse_config(data, str(path), path.parent)
    cfg._path = path.resolve()
    return cfg
