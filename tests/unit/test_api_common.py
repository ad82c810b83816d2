"""The Id field and the flattening of webargs' nested error messages."""
from __future__ import annotations

import logging

import marshmallow as ma
import pytest
from flask import Flask
from werkzeug.exceptions import HTTPException

from vsnap.api.common import (
    ClosedSchema,
    Id,
    JsonParser,
    StrictSchema,
    accepts_representation,
    flatten_messages,
    validation_error_from,
)
from vsnap.errors import ValidationError


@pytest.mark.parametrize("value, expected", [
    ("12", "12"), (12, "12"), (" 7 ", "7"), ("0", "0"), (0, "0"), ("007", "7"),
    ("999999999999999999", "999999999999999999"), (10**18 - 1, "999999999999999999"),
])
def test_id_accepts(value, expected):
    assert Id().deserialize(value) == expected


@pytest.mark.parametrize("value", [
    True, False, "abc", "-1", -1, "+1", "1e3", "1.5", 1.5, 12.0, "", "   ", "1 2", "0x1f",
    "1234567890123456789", 10**18, "１２", "٣", [1], {"id": 1},
])
def test_id_rejects(value):
    with pytest.raises(ma.ValidationError):
        Id().deserialize(value)


def test_id_rejects_null_unless_allowed():
    with pytest.raises(ma.ValidationError):
        Id().deserialize(None)
    assert Id(allow_none=True).deserialize(None) is None


HEX = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("value, expected", [
    (HEX, HEX), (HEX.upper(), HEX), (f"  {HEX}\n", HEX),
])
def test_hex32_id_accepts(value, expected):
    assert Id(hex32=True).deserialize(value) == expected


@pytest.mark.parametrize("value", [HEX[:-1], HEX + "0", "g" * 32, HEX[:-1] + "-", 12, True, "12"])
def test_hex32_id_rejects(value):
    with pytest.raises(ma.ValidationError):
        Id(hex32=True).deserialize(value)


def test_id_in_a_schema_is_emitted_as_string():
    class Body(StrictSchema):
        pool_id = Id(required=True)

    assert Body().load({"pool_id": 42}) == {"pool_id": "42"}
    assert Body().dump({"pool_id": 42}) == {"pool_id": "42"}
    with pytest.raises(ma.ValidationError) as info:
        Body().load({"pool_id": "x", "typo": 1})
    assert set(info.value.messages) == {"pool_id"}  # an unknown field is no error


def test_unknown_fields_are_ignored_and_logged_known_ones_stay_strict(caplog):
    class Body(StrictSchema):
        name = ma.fields.String(required=True)

    with caplog.at_level(logging.INFO, logger="vsnap.api.common"):
        assert Body().load({"name": "x", "_": "1700000000", "size_used": "12"}) == {"name": "x"}
    assert "_, size_used" in caplog.text
    with pytest.raises(ma.ValidationError):
        Body().load({"name": 5, "extra": 1})


def test_a_closed_schema_refuses_unknown_keys():
    class Options(ClosedSchema):
        read_only = ma.fields.Boolean()

    with pytest.raises(ma.ValidationError) as info:
        Options().load({"read_only": True, "squash": "none"})
    assert set(info.value.messages) == {"squash"}


class _Thing(ma.Schema):
    id = ma.fields.String()
    kind = ma.fields.String()
    name = ma.fields.String()
    size_used = ma.fields.String()


def _put(body: str, seen: list):
    app = Flask(__name__)
    have = {"id": "7", "kind": "lun", "name": "a", "size_used": "100"}

    @accepts_representation(_Thing, lambda thing_id: {**have, "id": thing_id}, fixed=("id", "kind"))
    def view(args, thing_id):
        seen.append((args, thing_id))
        return "done"

    with app.test_request_context("/x", method="PUT", data=body):
        return view({"name": "b"}, thing_id="7")


def test_a_put_takes_the_resources_own_representation_back():
    seen = []
    # unchanged fixed fields (an id as a number too) and stale measured values are ignored
    assert _put('{"id": 7, "kind": "lun", "name": "b", "size_used": "999"}', seen) == "done"
    assert _put('{"name": "b"}', seen) == "done" and len(seen) == 2


def test_a_put_that_changes_a_read_only_field_is_refused_before_anything_runs():
    seen = []
    with pytest.raises(ValidationError) as info:
        _put('{"id": "7", "kind": "filesystem", "name": "b"}', seen)
    assert info.value.status == 400 and "kind: read-only" in info.value.message and "'lun'" in info.value.message
    assert seen == []


def test_flatten_nested_webargs_messages():
    messages = {"json": {
        "name": ["Missing data for required field."],
        "services": {0: ["Must be one of: all, mgmt."], 2: ["Not a valid string."]},
        "options": {"compression": {"level": ["Must be greater than or equal to 1."]}},
    }}
    assert flatten_messages(messages) == [
        "name: Missing data for required field.",
        "services.0: Must be one of: all, mgmt.",
        "services.2: Not a valid string.",
        "options.compression.level: Must be greater than or equal to 1.",
    ]


def test_flatten_schema_level_and_several_locations():
    messages = {
        "json": {"_schema": ["Invalid input type."]},
        "querystring": {"used_as": ["Must be one of: unused, data."]},
        "view_args": {"id": ["Not a valid ID: expected a decimal number."]},
    }
    assert flatten_messages(messages) == [
        "Invalid input type.",
        "used_as: Must be one of: unused, data.",
        "id: Not a valid ID: expected a decimal number.",
    ]


def test_flatten_plain_values():
    assert flatten_messages("bad") == ["bad"]
    assert flatten_messages(["a", "b"]) == ["a", "b"]
    assert flatten_messages({}) == []


def test_validation_error_from():
    err = validation_error_from({"json": {"a": ["x"], "b": ["y", "z"]}})
    assert isinstance(err, ValidationError) and err.status == 400
    assert err.message == "a: x; b: y; b: z"
    assert validation_error_from({}).message == "Invalid request"


def test_flatten_real_webargs_error():
    """The structure flatten_messages gets is the one the real parser produces."""
    class Body(StrictSchema):
        name = ma.fields.String(required=True)
        ids = ma.fields.List(Id())

    app = Flask(__name__)
    with app.test_request_context("/x", method="POST", data='{"ids": [1, "abc"], "bogus": 1}'):
        with pytest.raises(HTTPException) as info:
            JsonParser().parse(Body(), location="json")
    assert info.value.code == 400
    assert sorted(flatten_messages(info.value.data["messages"])) == [
        "ids.1: Not a valid ID: expected a decimal number.",
        "name: Missing data for required field.",
    ]


def test_flatten_keeps_a_body_field_named_path():
    assert flatten_messages({"json": {"path": ["Not a valid string."]}}) == [
        "path: Not a valid string."]
