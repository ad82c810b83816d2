from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.disks import USED_AS
from .common import Blueprint, EmptyResponse, StrictSchema

blp = Blueprint("disk", __name__, url_prefix="/api/disk", description="Disks (spec 6)")


class DiskSchema(ma.Schema):
    model = ma.fields.String(allow_none=True)
    name = ma.fields.String()
    size = ma.fields.String()
    type = ma.fields.String()
    uuid = ma.fields.String()
    vendor = ma.fields.String(allow_none=True)
    used_as = ma.fields.String(metadata={"enum": list(USED_AS)})
    pool = ma.fields.String(allow_none=True, metadata={"description": "The pool the disk belongs to"})


class DiskListSchema(ma.Schema):
    disks = ma.fields.List(ma.fields.Nested(DiskSchema))
    total = ma.fields.Integer()


class DiskQuerySchema(StrictSchema):
    used_as = ma.fields.String(validate=ma.validate.OneOf(USED_AS))


class DiskActionSchema(StrictSchema):
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(["rescan"]))


def _disks():
    return current_app.extensions["vsnap"].disks


@blp.route("")
@blp.arguments(DiskQuerySchema, location="query")
@blp.response(200, DiskListSchema)
def list_disks(query):
    """List disks, optionally only those with a given use (6.1)"""
    disks = _disks().list(query.get("used_as"))
    return {"disks": disks, "total": len(disks)}


@blp.route("", methods=["POST"])
@blp.arguments(DiskActionSchema)
@blp.response(200, EmptyResponse)
def disk_action(args):
    """Rescan for added or removed disks (6.2)"""
    _disks().rescan()
    return {}
