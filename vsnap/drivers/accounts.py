"""OS accounts: PAM password checks and group membership (the vsnap_admin role)."""
from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass

import pam

from .runner import Runner


@dataclass
class Account:
    name: str
    uid: int
    gid: int


class AccountDriver:
    def __init__(self, runner: Runner, pam_service: str = "vsnap"):
        self.runner = runner
        self.pam_service = pam_service

    def authenticate(self, user: str, password: str) -> bool:
        # A fresh PamAuthenticator per call: the object keeps per-call state and is not thread-safe.
        return bool(pam.PamAuthenticator().authenticate(user, password, service=self.pam_service))

    def members(self, group: str) -> list[Account]:
        """Accounts in `group`, as secondary members or by primary group."""
        try:
            entry = grp.getgrnam(group)
        except KeyError:
            return []
        names = set(entry.gr_mem)
        accounts = {}
        for user in pwd.getpwall():
            if user.pw_gid == entry.gr_gid or user.pw_name in names:
                accounts[user.pw_name] = Account(user.pw_name, user.pw_uid, user.pw_gid)
        return sorted(accounts.values(), key=lambda a: a.uid)

    def is_member(self, user: str, group: str) -> bool:
        try:
            entry = grp.getgrnam(group)
            account = pwd.getpwnam(user)
        except KeyError:
            return False
        return user in entry.gr_mem or account.pw_gid == entry.gr_gid
