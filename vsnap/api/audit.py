from __future__ import annotations

import marshmallow as ma
from flask import current_app

from .common import Blueprint, Size, StrictSchema

blp = Blueprint("audit", __name__, url_prefix="/api/audit", description="Audit trail of changes")


class AuditEventSchema(ma.Schema):
    id = ma.fields.String()
    time = ma.fields.String(metadata={"description": "Epoch seconds"})
    user = ma.fields.String(allow_none=True)
    address = ma.fields.String(allow_none=True)
    method = ma.fields.String()
    path = ma.fields.String()
    detail = ma.fields.Raw(allow_none=True, metadata={"description": "The request body, secrets removed"})
    status = ma.fields.Integer(metadata={"description": "The HTTP status of the answer"})
    message = ma.fields.String(allow_none=True, metadata={"description": "The error message, if it failed"})
    request_id = ma.fields.String(allow_none=True)


class AuditListSchema(ma.Schema):
    events = ma.fields.List(ma.fields.Nested(AuditEventSchema))
    total = ma.fields.Integer()


class AuditQuerySchema(StrictSchema):
    limit = Size(load_default=100, validate=ma.validate.Range(min=1, max=10000))
    user = ma.fields.String(validate=ma.validate.Length(min=1, max=256))


@blp.route("")
@blp.arguments(AuditQuerySchema, location="query")
@blp.response(200, AuditListSchema)
def list_events(query):
    """The newest changes made through the API (who, what, when, result)"""
    events, total = current_app.extensions["vsnap"].audit.list(query["limit"], query.get("user"))
    return {"events": events, "total": total}
