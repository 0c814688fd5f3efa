"""What every section shares: the strict base model, id and area-code rules, a map location."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

AREA_CODE = re.compile(r"^\d{12}$")
IDENT = r"^[a-z0-9][a-z0-9_-]{0,31}$"  # ids end up in MQTT topics and URLs


class Strict(BaseModel):
    """Unknown keys are errors; numbers must be finite (YAML's .nan and .inf are refused as such)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_area_code(value: str) -> str:
    """Field validator: a township or village is named by its 12-digit code (行政区划代码)."""
    if not AREA_CODE.match(value):
        raise ValueError("must be a 12-digit administrative area code (行政区划代码), e.g. 340621103000")
    return value


def area_prefix(code: str) -> str:
    """The significant part of a hierarchical area code (trailing zero groups cover the region;
    all zeros is the whole country)."""
    if code == "0" * 12:
        return ""
    for width in (2, 4, 6, 9):
        if code[width:] == "0" * (12 - width):
            return code[:width]
    return code


class KeySource(Strict):
    """A public key given in the config or in a file next to it (county and platform keys)."""

    public_key: str | None = Field(default=None,
                                   description="PEM public key, or the raw key in hex or base64")
    public_key_file: str | None = Field(default=None,
                                        description="File holding the public key (relative to this file)")

    @model_validator(mode="after")
    def _one_source(self) -> KeySource:
        if (self.public_key is None) == (self.public_key_file is None):
            raise ValueError("give exactly one of public_key and public_key_file")
        return self

    def key_text(self, base: Path) -> str:
        """The key as written in the config or read from ``public_key_file`` (relative to ``base``)."""
        if self.public_key is not None:
            return self.public_key
        path = Path(self.public_key_file or "")
        return (path if path.is_absolute() else base / path).read_text(encoding="utf-8")


class Location(Strict):
    lat: float = Field(ge=-90, le=90, description="Latitude, degrees north")
    lon: float = Field(ge=-180, le=180, description="Longitude, degrees east")
