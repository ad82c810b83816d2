"""The metadata index. ZFS is the truth for what exists; these tables give objects their API
IDs and keep what ZFS cannot."""
from __future__ import annotations

import time

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Small appliance-wide values: init status, multipool."""

    __tablename__ = "setting"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text, nullable=True)


class NetworkServices(Base):
    """The services an interface carries, by interface id (MAC without colons, or its name)."""

    __tablename__ = "network_services"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    services: Mapped[list] = mapped_column(JSON)
    time_updated: Mapped[int] = mapped_column(Integer, default=now)
