"""Numbers in query strings and bodies are ASCII digits: int() would also read other scripts'
digits ("١٢" is 12, "²" fails later), which no client means."""
from __future__ import annotations

import marshmallow as ma
import pytest

from vsnap.api.audit import AuditQuerySchema
from vsnap.api.common import Size


@pytest.mark.parametrize("value", ["١٢", "٨٩١٠", "１２", "²", " ١ ", 1.0, True, "1e3", "-1", ""])
def test_size_refuses_what_is_not_ascii_digits(value):
    with pytest.raises(ma.ValidationError):
        Size().deserialize(value)


@pytest.mark.parametrize("value, expected", [("12", 12), (" 42 ", 42), (7, 7), ("1073741824", 1 << 30)])
def test_size_accepts_whole_numbers(value, expected):
    assert Size().deserialize(value) == expected


def test_audit_limit_refuses_other_digits():
    assert AuditQuerySchema().load({"limit": "12"})["limit"] == 12
    with pytest.raises(ma.ValidationError):
        AuditQuerySchema().load({"limit": "١٢"})
