from __future__ import annotations

import marshmallow as ma
from flask import current_app

from .common import Blueprint

blp = Blueprint("target", __name__, url_prefix="/api/target", description="iSCSI target ports (spec 5)")


class TargetSchema(ma.Schema):
    type = ma.fields.String()
    wwn = ma.fields.String(metadata={"description": "The target name initiators log in to"})
    host_id = ma.fields.String(allow_none=True, metadata={
        "description": "The host this target serves, where the target driver (tgt) gives each host a "
                       "target of its own; null for a target shared by all hosts (LIO)"})


class TargetListSchema(ma.Schema):
    targets = ma.fields.List(ma.fields.Nested(TargetSchema))
    total = ma.fields.Integer()


@blp.route("")
@blp.response(200, TargetListSchema)
def list_targets():
    """List target ports (5.1)"""
    targets = current_app.extensions["vsnap"].targets.list()
    return {"targets": targets, "total": len(targets)}
