from __future__ import annotations

import marshmallow as ma
from flask import current_app

from .common import Blueprint

blp = Blueprint("user", __name__, url_prefix="/api/user", description="Accounts with the vsnap_admin role (spec 3)")


class UserSchema(ma.Schema):
    gid = ma.fields.String()
    name = ma.fields.String()
    role = ma.fields.String()
    uid = ma.fields.String()


class UserListSchema(ma.Schema):
    total = ma.fields.Integer()
    users = ma.fields.List(ma.fields.Nested(UserSchema))


@blp.route("")
@blp.response(200, UserListSchema)
def list_users():
    """List users in the vsnap group (3.1)"""
    users = current_app.extensions["vsnap"].users.list()
    return {"total": len(users), "users": users}
