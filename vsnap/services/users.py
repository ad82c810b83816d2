from __future__ import annotations

from ..config import Settings
from ..drivers.accounts import AccountDriver

ROLE = "vsnap_admin"


class UserService:
    def __init__(self, settings: Settings, accounts: AccountDriver):
        self.settings = settings
        self.accounts = accounts

    def list(self) -> list[dict]:
        return [{"name": a.name, "uid": str(a.uid), "gid": str(a.gid), "role": ROLE}
                for a in self.accounts.members(self.settings.admin_group)]
