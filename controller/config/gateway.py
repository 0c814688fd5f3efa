"""The ``gateway`` section: who this gateway is, where, and in which time zone it reads clocks."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from controller.config.common import IDENT, Location, Strict, check_area_code

DEFAULT_TIMEZONE = "Asia/Shanghai"
"""China's one time zone (no daylight saving): the default of ``gateway.timezone``."""


class Gateway(Strict):
    id: str = Field(pattern=IDENT, description="Gateway id used in MQTT topics (lower case, digits, - _)")
    name: str = Field(min_length=1, description="Human name, e.g. 濉溪县刘桥镇应急广播网关")
    area_code: str = Field(description="12-digit area code of the township this gateway serves")
    location: Location
    ebrid: str | None = Field(default=None, pattern=r"^\d{23}$",
                              description="23-digit resource code (EBRID) of this township broadcast system "
                                          "on the national platform; required with national_platform")
    timezone: str = Field(default=DEFAULT_TIMEZONE,
                          description="IANA time zone of the township, e.g. Asia/Shanghai: schedules, times "
                                      "in announcements and in the web console are read in it")

    _area = field_validator("area_code")(check_area_code)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{value}' is not an IANA time zone name such as Asia/Shanghai or Asia/Urumqi "
                             "(not an offset like UTC+8)") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The township's time zone."""
        return ZoneInfo(self.timezone)
