"""What every blueprint shares: the parser, the error schema, ID fields and list envelopes."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

import marshmallow as ma
from flask import current_app, jsonify, request
from flask_smorest import Blueprint as SmorestBlueprint
from webargs import core
from webargs.flaskparser import FlaskParser

from ..errors import ValidationError

log = logging.getLogger(__name__)

class JsonParser(FlaskParser):
    """Reports bad input as 400 (not webargs' 422), and reads a JSON body whatever the
    Content-Type says, so `curl -d '{...}'` works without -H."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        return core.parse_json(data)


class Blueprint(SmorestBlueprint):
    # unknown=None: each schema's own Meta.unknown decides (StrictSchema ignores unknown
    # fields, in the body and in the query string alike; ClosedSchema refuses them).
    ARGUMENTS_PARSER = JsonParser(unknown=None)


class ErrorBody(ma.Schema):
    message = ma.fields.String(required=True)
    type = ma.fields.String(required=True)


class ErrorSchema(ma.Schema):
    error = ma.fields.Nested(ErrorBody, required=True)


class Id(ma.fields.String):
    """IDs arrive as strings or JSON numbers; they are always emitted as strings."""

    def __init__(self, *, hex32: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.hex32 = hex32

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise ma.ValidationError("Not a valid ID.")
        if isinstance(value, int):
            value = str(value)
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        if self.hex32:
            if len(value) != 32 or any(c not in "0123456789abcdef" for c in value.lower()):
                raise ma.ValidationError("Not a valid ID: expected 32 hexadecimal characters.")
            return value.lower()
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ma.ValidationError("Not a valid ID: expected a decimal number.")
        return str(int(value))


class StrictSchema(ma.Schema):
    """Request bodies and query strings. The fields we know are validated strictly; a field
    we do not know (a cache-buster in the query, a newer client's field, the rest of a
    resource's representation sent back in its PUT) is ignored, and named in the log."""

    class Meta:
        unknown = ma.EXCLUDE

    @ma.pre_load
    def _log_unknown(self, data, **kwargs):
        if isinstance(data, Mapping):
            known = {field.data_key or name for name, field in self.load_fields.items()}
            unknown = sorted(str(key) for key in data if key not in known)
            if unknown:
                log.info("request fields ignored, unknown here: %s", ", ".join(unknown)[:500])
        return data


class ClosedSchema(StrictSchema):
    """An object inside a field we know (share_options): a key there that we do not know is
    an option the client counts on, and ignoring it would give something else: refused."""

    class Meta:
        unknown = ma.RAISE


def _same_value(sent, have) -> bool:
    def scalar(value):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    if scalar(sent) and scalar(have):
        return str(sent) == str(have)  # IDs arrive as JSON numbers or strings
    return sent == have


def accepts_representation(detail_schema: type[ma.Schema], current: Callable[..., dict],
                           fixed: tuple[str, ...]):
    """A PUT takes the resource's own representation back (read-modify-write). Its fields
    that never change (`fixed`: ids, types, ...) are ignored when they are what the resource
    has, and refused with 400 when they differ, so nobody believes they changed one; measured
    values (sizes, times, status) are ignored as sent. Views take (args, **path)."""
    def decorator(view):
        @functools.wraps(view)
        def wrapper(args, **path):
            body = request.get_json(silent=True, force=True)
            sent = {k: v for k, v in body.items() if k in fixed} if isinstance(body, dict) else {}
            if sent:
                have = detail_schema().dump(current(**path))
                changed = [k for k in fixed if k in sent and k in have and not _same_value(sent[k], have[k])]
                if changed:
                    raise ValidationError("; ".join(f"{k}: read-only, it cannot be changed (it is {have[k]!r})"
                                                    for k in changed))
            return view(args, **path)
        return wrapper
    return decorator


class EmptySchema(ma.Schema):
    pass


LOCATIONS = ("json", "query", "querystring", "view_args", "path")


def flatten_messages(messages, prefix: str = "", top: bool = True) -> list[str]:
    """webargs' nested error dict -> readable 'field: problem' lines. The outermost keys name
    request locations (json, query, ...), which the client does not need to see."""
    if isinstance(messages, dict):
        lines = []
        for key, value in messages.items():
            if top and key in LOCATIONS:
                lines.extend(flatten_messages(value, "", top=False))
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
                lines.extend(flatten_messages(value, name, top=False))
        return lines
    if isinstance(messages, (list, tuple)):
        lines = []
        for item in messages:
            lines.extend(flatten_messages(item, prefix, top=False))
        return lines
    text = str(messages)
    return [f"{prefix}: {text}" if prefix and prefix != "_schema" else text]


def validation_error_from(messages) -> ValidationError:
    lines = flatten_messages(messages) or ["Invalid request"]
    return ValidationError("; ".join(lines))



class DumpMemo:
    """The JSON text of the last few list bodies. Services hand out the same list object
    while nothing changed (CatalogView.memo), so a body whose lists are those same objects
    (and whose other values are equal) has the same text: served without dumping again."""

    SIZE = 8

    def __init__(self):
        self._kept: list[tuple[dict, bytes]] = []  # strong references: ids are never reused

    @staticmethod
    def _same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            a[k] is b[k] if isinstance(a[k], list) else a[k] == b[k] for k in a)

    def get(self, body: dict, dump) -> bytes:
        for kept_body, text in list(self._kept):
            if self._same(kept_body, body):
                return text
        text = dump()
        self._kept = [(body, text)] + self._kept[:self.SIZE - 1]
        return text


def list_or_detail(blp: Blueprint, list_schema: type[ma.Schema], detail_schema: type[ma.Schema]):
    """For the spec's `GET /api/<resource>[?id=|?name=]`: the view returns ("list", body) or
    ("detail", body); each is dumped through its own schema, and the document says oneOf."""

    dumped = DumpMemo()

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            kind, body = view(*args, **kwargs)
            if kind == "detail":
                return jsonify(detail_schema().dump(body))
            text = dumped.get(body, lambda: jsonify(list_schema().dump(body)).get_data())
            return current_app.response_class(text, mimetype="application/json")

        return blp.doc(responses={"200": {
            "description": "The list; one object's details when ?id= or ?name= is given",
            "content": {"application/json": {"schema": {"oneOf": [list_schema, detail_schema]}}},
        }})(wrapper)

    return decorator


class Size(ma.fields.Integer):
    """Byte counts arrive as JSON numbers or decimal strings ("1073741824"), as in the spec."""

    def __init__(self, **kwargs):
        super().__init__(strict=False, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        # isascii: int() also reads other scripts' digits ("١٢" is 12), which no client means
        if isinstance(value, bool) or (isinstance(value, str) and not (value.strip().isascii()
                                                                       and value.strip().isdigit())) \
                or isinstance(value, float):
            raise ma.ValidationError("Not a valid size: expected a whole number of bytes.")
        return super()._deserialize(value, attr, data, **kwargs)


class EmptyResponse(ma.Schema):
    pass
