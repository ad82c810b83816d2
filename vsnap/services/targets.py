from __future__ import annotations

from ..config import Settings
from .system import SystemService


class TargetService:
    def __init__(self, settings: Settings, system: SystemService):
        self.settings = settings
        self.system = system

    @property
    def base_iqn(self) -> str:
        """`iqn.<yyyy-mm>.<reversed domain>.vsnap:<system id>`."""
        return f"{self.settings.iqn_prefix}:{self.system.id}"

    def list(self) -> list[dict]:
        return [{"type": "iqn", "wwn": self.base_iqn}]
