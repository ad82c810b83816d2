from __future__ import annotations

import marshmallow as ma
from flask import current_app

from .common import Blueprint, Id, StrictSchema, list_or_detail

blp = Blueprint("session", __name__, url_prefix="/api/session", description="Replication sessions (spec 14)")

STATUSES = ["PENDING", "ACTIVE", "COMPLETED", "FAILED"]


class SessionSchema(ma.Schema):
    id = ma.fields.String()
    rel_id = ma.fields.String()
    local_snap_id = ma.fields.String(allow_none=True)
    remote_snap_id = ma.fields.String(allow_none=True)
    local_snap_name = ma.fields.String(allow_none=True)
    remote_snap_name = ma.fields.String(allow_none=True)
    repl_address = ma.fields.String(allow_none=True)
    size_sent = ma.fields.String(allow_none=True, metadata={"description": "Bytes sent so far"})
    size_sent_total = ma.fields.String(allow_none=True, metadata={
        "description": "Beyond the spec: the bytes of this snapshot's stream the replica holds, with what it kept of "
                       "an interrupted transfer this session resumed (else size_sent)"})
    rate = ma.fields.String(allow_none=True, metadata={
        "description": "Beyond the spec: bytes per second, over the last seconds while ACTIVE, the stream's "
                       "average once ended"})
    status = ma.fields.String(metadata={"enum": STATUSES})
    time_queued = ma.fields.String()
    time_started = ma.fields.String(allow_none=True)
    time_ended = ma.fields.String(allow_none=True)
    message = ma.fields.String(allow_none=True)


class SessionListSchema(ma.Schema):
    sessions = ma.fields.List(ma.fields.Nested(SessionSchema))
    total = ma.fields.Integer()


class SessionQuerySchema(StrictSchema):
    id = Id()
    rel_id = Id(hex32=True)


class SessionActionSchema(StrictSchema):
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(["cancel"]))


def replication():
    return current_app.extensions["vsnap"].replication


@blp.route("")
@blp.arguments(SessionQuerySchema, location="query")
@list_or_detail(blp, SessionListSchema, SessionSchema)
def list_sessions(query):
    """List sessions (14.2), ?rel_id= for one relationship's; ?id= gives one's details"""
    if "id" in query:
        return "detail", replication().get_session(query["id"])
    found = replication().list_sessions(rel_id=query.get("rel_id"))
    return "list", {"sessions": found, "total": len(found)}


@blp.route("/<string:session_id>")
@blp.response(200, SessionSchema)
def get_session(session_id):
    """Get session details (14.3)"""
    return replication().get_session(session_id)


@blp.route("/<string:session_id>", methods=["POST"])
@blp.arguments(SessionActionSchema)
@blp.response(200, SessionSchema)
def session_action(args, session_id):
    """Cancel a session (14.4): it ends FAILED with message "Canceled" """
    return replication().cancel_session(session_id)
