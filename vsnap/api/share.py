from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..services.shares import SHARE_TYPES
from .common import Blueprint, ClosedSchema, EmptyResponse, Id, StrictSchema, list_or_detail

blp = Blueprint("share", __name__, url_prefix="/api/share", description="NFS and SMB shares (spec 8.8, 8.9, 9)")


class ShareOptionsSchema(ClosedSchema):
    read_only = ma.fields.Boolean(metadata={"description": "nfs only; default false"})
    allowed_hosts = ma.fields.List(ma.fields.String(), allow_none=True, metadata={
        "description": "nfs only: hostnames, IP addresses, CIDR subnets, or 'all'; "
                       "absent: no external host may mount"})


class ShareSummarySchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String(metadata={"description": "NFS export path, or SMB share name <pool>_<volume>"})
    vol_id = ma.fields.String()
    share_type = ma.fields.String(metadata={"enum": list(SHARE_TYPES)})
    time_created = ma.fields.String()
    time_updated = ma.fields.String()


class ShareSchema(ShareSummarySchema):
    share_options = ma.fields.Nested(ShareOptionsSchema)


class ShareListSchema(ma.Schema):
    shares = ma.fields.List(ma.fields.Nested(ShareSummarySchema))
    total = ma.fields.Integer()


class ShareBodySchema(StrictSchema):
    share_type = ma.fields.String(required=True, validate=ma.validate.OneOf(SHARE_TYPES))
    share_options = ma.fields.Nested(ShareOptionsSchema, load_default=None, allow_none=True)


class ShareCreateSchema(ShareBodySchema):
    vol_id = Id(required=True)


class ShareUpdateSchema(ShareBodySchema):
    """The spec asks clients to send back the whole body of GET: its read-only fields are
    ignored (accepts_representation refuses a changed id or vol_id)."""


class ShareQuerySchema(StrictSchema):
    id = Id()


def shares():
    return current_app.extensions["vsnap"].shares


@blp.route("")
@blp.arguments(ShareQuerySchema, location="query")
@list_or_detail(blp, ShareListSchema, ShareSchema)
def list_shares(query):
    """List shares (9.1); ?id= gives one's details (9.2)"""
    if "id" in query:
        return "detail", shares().get(share_id=query["id"])
    found = shares().list()
    return "list", {"shares": found, "total": len(found)}


@blp.route("", methods=["POST"])
@blp.arguments(ShareCreateSchema)
@blp.response(200, ShareSchema)
def create_share(args):
    """Share a filesystem volume given by vol_id (as POST /api/volume/<vol_id>/share)"""
    return shares().create(args["vol_id"], args["share_type"], args["share_options"])


@blp.route("/<string:share_id>")
@blp.response(200, ShareSchema)
def get_share(share_id):
    """Get share details (9.2)"""
    return shares().get(share_id=share_id)


@blp.route("/<string:share_id>", methods=["DELETE"])
@blp.response(200, EmptyResponse)
def delete_share(share_id):
    """Delete a share (9.4)"""
    shares().delete(share_id=share_id)
    return {}
