"""What every section shares: the strict base model, id and area-code rules, a map location."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

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


class Location(Strict):
    lat: float = Field(ge=-90, le=90, description="Latitude, degrees north")
    lon: float = Field(ge=-180, le=180, description="Longitude, degrees east")
