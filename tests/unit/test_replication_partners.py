"""Partners (partners.py), through ReplicationService: create_partner (the offer over pinned TLS,
and what is undone when it fails), accept_partner, delete_partner, get/list, the notices a
partner missed and the addresses it gave. Fakes and fixtures: replication_support.py."""
from __future__ import annotations

import json
import logging
import os
import uuid

import pytest

from vsnap.drivers.partner_api import PartnerApiError
from vsnap.errors import ConflictError, NotFoundError, ServiceUnavailableError, ValidationError
from vsnap.services.replication import REPLICA, RemoteError
from vsnap.services.replication.partners import Partners
from vsnap.store.models import Setting

import replication_support
from replication_support import (
    OTHER_KEY,
    OUR_FP,
    OUR_HOST,
    OUR_KEY,
    OUR_SYS,
    P1,
    P2,
    PARTNER_HOST,
    PARTNER_KEY,
    R1,
    REMOTE_FP,
    REMOTE_SYS,
    good_answer,
)

# The fixtures of replication_support these tests take, bound here for pytest to find (imported
# by name, each would read to ruff as redefined by every test's parameter of that name).
env = replication_support.env


def offer(**over) -> dict:
    body = {"id": P1, "system_id": REMOTE_SYS, "address": "10.0.0.2", "api_port": 8900, "ssh_port": 8922,
            "tls_fingerprint": REMOTE_FP, "ssh_public_key": PARTNER_KEY + " c", "ssh_host_key": PARTNER_HOST}
    body.update(over)
    return body


def create(env, remote_addr="10.0.0.2", user="admin", password="pw", **kw):
    kw.setdefault("local_addr", "10.0.0.1")
    return env.svc.create_partner(remote_addr, user, password, **kw)


# =============================================================================================
# create_partner
# =============================================================================================

def test_create_partner_success(env):
    body = create(env, remote_addr="Partner.Example.COM", user="admin", password="s3cret")
    partner_id = body["id"]
    assert len(partner_id) == 32 and int(partner_id, 16) >= 0
    assert body == {"id": partner_id, "address": "partner.example.com", "api_port": "8900", "ssh_port": "8922",
                    "time_created": body["time_created"], "time_updated": body["time_updated"]}
    (row,) = env.partners().values()
    assert (row.id, row.system_id, row.address, row.api_port, row.ssh_port, row.tls_fingerprint) == \
        (partner_id, REMOTE_SYS, "partner.example.com", 8900, 8922, REMOTE_FP)
    assert row.ssh_public_key == PARTNER_KEY and row.ssh_host_key == PARTNER_HOST  # comments dropped
    # the partner's key goes in, forced onto the serve command for that partner
    assert env.ssh.authorized == {partner_id: (PARTNER_KEY, env.svc.serve_command(partner_id))}
    command = env.svc.serve_command(partner_id)
    assert command[1:3] == ["-m", "vsnap.worker.serve"]
    assert command[command.index("--partner") + 1] == partner_id
    assert command[command.index("--state") + 1] == str(env.settings.state_dir)
    assert env.ssh.pinned == {partner_id: PARTNER_HOST}
    # the offer went to the pinned certificate with the credentials
    assert env.cert_calls == [("partner.example.com", 8900)]
    (post,) = env.api.posts
    assert (post["address"], post["port"], post["fingerprint"], post["path"]) == \
        ("partner.example.com", 8900, REMOTE_FP, "/api/partner/accept")
    assert post["auth"] == ("admin", "s3cret")
    assert post["body"] == {"id": partner_id, "system_id": OUR_SYS, "address": "10.0.0.1",
                            "api_port": env.settings.port, "ssh_port": env.settings.ssh_port,
                            "ssh_public_key": OUR_KEY, "ssh_host_key": OUR_HOST, "tls_fingerprint": OUR_FP}
    assert env.link.calls == []  # nothing to undo
    assert env.lock.taken >= 1
    assert env.svc.get_partner(partner_id) == body
    assert env.svc.list_partners() == [body]


def test_create_partner_ports(env):
    create(env, remote_api_port=9443, local_api_port=8443, local_ssh_port=2222, remote_ssh_port=2200)
    (row,) = env.partners().values()
    assert (row.api_port, row.ssh_port) == (9443, 2200)  # remote_ssh_port wins over the answer's
    assert env.cert_calls == [("10.0.0.2", 9443)]
    post = env.api.posts[0]
    assert post["port"] == 9443
    assert (post["body"]["api_port"], post["body"]["ssh_port"]) == (8443, 2222)


def test_create_partner_default_local_address(env, monkeypatch):
    seen = []
    monkeypatch.setattr(env.svc.partners, "_local_address_towards", lambda remote: seen.append(remote) or "10.9.9.9")
    env.svc.create_partner("10.0.0.2", "admin", "pw")
    assert seen == ["10.0.0.2"]
    assert env.api.posts[0]["body"]["address"] == "10.9.9.9"


def test_local_address_towards_loopback():
    assert Partners._local_address_towards("127.0.0.1") == "127.0.0.1"


def _nothing_contacted_or_kept(env):
    assert env.cert_calls == [] and env.api.posts == []
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}
    assert env.link.calls == []


@pytest.mark.parametrize("remote_addr", ["-oProxyCommand=x", "a b", "", " ", "all", "10.0.0.0/8", None, 5,
                                         "host;id", "fe80::1%eth0"])
def test_create_partner_bad_remote_address(env, remote_addr):
    with pytest.raises(ValidationError):
        create(env, remote_addr=remote_addr)
    _nothing_contacted_or_kept(env)


@pytest.mark.parametrize("local_addr", ["-oProxyCommand=x", "a b", "", "all"])
def test_create_partner_bad_local_address(env, local_addr):
    with pytest.raises(ValidationError):
        create(env, local_addr=local_addr)
    _nothing_contacted_or_kept(env)


@pytest.mark.parametrize("arg", ["remote_api_port", "local_api_port", "local_ssh_port", "remote_ssh_port"])
@pytest.mark.parametrize("value", [0, 65536, True, "x", "22", -5])
def test_create_partner_bad_ports(env, arg, value):
    with pytest.raises(ValidationError, match=arg):
        create(env, **{arg: value})
    _nothing_contacted_or_kept(env)


@pytest.mark.parametrize("user, password", [("", "pw"), (None, "pw"), (5, "pw"), ("admin", None),
                                            ("admin", 5), (["admin"], "pw")])
def test_create_partner_needs_credentials(env, user, password):
    with pytest.raises(ValidationError):
        create(env, user=user, password=password)
    _nothing_contacted_or_kept(env)


def test_create_partner_unreachable_certificate(env):
    env.certs[("10.0.0.2", 8900)] = PartnerApiError("cannot reach 10.0.0.2:8900: refused")
    with pytest.raises(ValidationError, match="cannot be reached.*check remote_addr and remote_api_port"):
        create(env)
    assert env.api.posts == [] and env.partners() == {} and env.link.calls == []


@pytest.mark.parametrize("status, error", [(401, ValidationError), (403, ValidationError),
                                           (409, ConflictError), (400, ConflictError),
                                           (500, ServiceUnavailableError), (None, ServiceUnavailableError)])
def test_create_partner_refused_by_the_partner(env, status, error):
    env.api.error = PartnerApiError("nope", status)
    with pytest.raises(error) as info:
        create(env)
    assert type(info.value) is error
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}
    assert env.link.calls == []  # the partner did not accept: nothing to withdraw


def test_create_partner_credential_refusal_names_the_user(env):
    env.api.error = PartnerApiError("Invalid credentials", 401)
    with pytest.raises(ValidationError, match="admin"):
        create(env, user="admin")


BAD_ANSWERS = [
    ("bad public key", {"ssh_public_key": 'command="/bin/sh" ' + PARTNER_KEY}),
    ("dsa public key", {"ssh_public_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAN"}),
    ("missing public key", {"ssh_public_key": None}),
    ("multiline-only key", {"ssh_public_key": "\n\n"}),
    ("bad host key", {"ssh_host_key": "@cert-authority * " + PARTNER_HOST}),
    ("missing host key", {"ssh_host_key": None}),
    ("bad system id", {"system_id": "XYZ"}),
    ("upper-case system id", {"system_id": REMOTE_SYS.upper()}),
    ("short system id", {"system_id": "abc"}),
    ("system id with newline", {"system_id": REMOTE_SYS + "\n"}),
    ("missing system id", {"system_id": None}),
    ("numeric system id", {"system_id": 12345678}),
    ("bad ssh port", {"ssh_port": 0}),
    ("ssh port as text", {"ssh_port": "22"}),
    ("missing ssh port", {"ssh_port": None}),
]


@pytest.mark.parametrize("what, change", BAD_ANSWERS, ids=[b[0] for b in BAD_ANSWERS])
def test_create_partner_unusable_answer(env, what, change):
    env.api.answer = good_answer(**change)
    with pytest.raises(ValidationError):
        create(env)
    assert env.partners() == {}
    assert env.ssh.authorized == {} and env.ssh.pinned == {}
    if what in ("bad host key", "missing host key", "bad ssh port", "ssh port as text", "missing ssh port"):
        assert env.link.calls == []  # the partner cannot be verified or reached: nothing is sent
        return
    (call,) = env.link.calls  # the partner trusts us already: withdrawing is attempted
    assert call.op == "unpartner" and call.partner_id == env.api.posts[0]["body"]["id"]
    assert call.address == "10.0.0.2"


def test_create_partner_unusable_answer_when_the_withdrawal_fails_too(env, caplog):
    env.api.answer = good_answer(ssh_public_key="garbage")
    env.link.answers["unpartner"] = RemoteError("partner 10.0.0.2:22 unreachable over SSH", unreachable=True)
    with caplog.at_level(logging.WARNING, logger="vsnap.services.replication"):
        with pytest.raises(ValidationError):
            create(env)
    assert env.partners() == {} and env.ssh.authorized == {}
    assert any("could not withdraw" in r.getMessage() for r in caplog.records)


def test_create_partner_answer_not_an_object(env):
    env.api.answer = ["not", "an", "object"]
    with pytest.raises(ValidationError):
        create(env)
    assert env.link.ops() == []  # no host key to verify the partner by: nothing is sent to it
    assert env.partners() == {} and env.ssh.pinned == {}


def test_partnering_again_keeps_the_id_and_updates_addresses_and_keys(env):
    old = create(env)["id"]
    env.api.answer = good_answer(ssh_public_key=OTHER_KEY, ssh_port=2222, id=old, renewed=True)
    new = create(env, remote_addr="10.0.0.3")["id"]  # found by its certificate: offered under its id
    assert new == old and env.api.posts[-1]["body"]["id"] == old
    (row,) = env.partners().values()
    assert (row.id, row.address, row.ssh_port, row.ssh_public_key) == (old, "10.0.0.3", 2222, OTHER_KEY)
    assert set(env.ssh.authorized) == {old} and set(env.ssh.pinned) == {old}
    assert env.ssh.authorized[old][0] == OTHER_KEY


def test_partnering_again_takes_the_id_the_partner_knows_us_by(env):
    # This appliance was rebuilt (it knows no partner); the partner still knows it as P2.
    env.api.answer = good_answer(id=P2, renewed=True)
    assert create(env)["id"] == P2
    assert set(env.partners()) == {P2} and set(env.ssh.authorized) == {P2}


def test_an_answer_naming_another_partnerships_id_is_refused_and_withdrawn(env):
    env.partner(P2, system_id="0f" * 8)
    env.svc.partners.remember_addresses(P2, ["10.9.0.2"])
    env.api.answer = good_answer(id=P2)  # a new partnership (not renewed), under P2's id
    with pytest.raises(ConflictError):
        create(env, remote_addr="10.0.0.9")
    assert env.partners()[P2].system_id == "0f" * 8 and env.svc.partners.remembered_addresses(P2) == ["10.9.0.2"]
    assert [c.op for c in env.link.calls] == ["unpartner"]


def test_partnering_again_while_relationships_use_it_keeps_them(env):
    old = create(env)["id"]
    rel = env.relationship(env.fs, old)
    env.api.answer = good_answer(id=old, renewed=True)
    assert create(env)["id"] == old
    assert set(env.partners()) == {old} and set(env.rels()) == {rel}
    assert env.link.calls == []  # nothing withdrawn


def test_withdrawal_can_verify_the_partner_host_key(env):
    env.api.answer = good_answer(ssh_public_key="garbage")  # unusable: this side refuses it
    with pytest.raises(ValidationError):
        create(env)
    (call,) = env.link.calls
    assert call.pinned == PARTNER_HOST, "no host key pinned for the partner when withdrawing"


def test_withdrawal_uses_the_partners_ssh_port(env):
    env.api.answer = good_answer(ssh_port=8922, ssh_public_key="garbage")
    with pytest.raises(ValidationError):
        create(env)
    (call,) = env.link.calls
    assert call.port == 8922


def test_a_renewed_partnership_is_not_withdrawn_when_this_side_fails(env):
    old = create(env)["id"]
    env.api.answer = good_answer(id=old, renewed=True, ssh_public_key="garbage")
    with pytest.raises(ValidationError):
        create(env)
    assert env.link.calls == [] and set(env.partners()) == {old} and set(env.ssh.authorized) == {old}


def _db_bytes(store) -> bytes:
    path = store.engine.url.database
    data = b""
    for suffix in ("", "-wal", "-journal"):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as f:
                data += f.read()
    return data


def test_password_is_never_stored_nor_logged(env, caplog):
    password = f"pw-{uuid.uuid4().hex}"
    user = f"user-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.DEBUG):
        # refused credentials, an unusable answer, a conflict, then a success
        env.api.error = PartnerApiError("Invalid credentials", 401)
        with pytest.raises(ValidationError) as refused:
            create(env, user=user, password=password)
        env.api.error = None
        env.api.answer = good_answer(system_id="nothex")
        with pytest.raises(ValidationError) as unusable:
            create(env, user=user, password=password)
        env.api.answer = good_answer()
        body = create(env, user=user, password=password)
        env.partner(P2, system_id="0f" * 8)
        env.api.answer = good_answer(id=P2, system_id="0e" * 8)  # names another partnership: refused
        with pytest.raises(ConflictError) as conflict:
            create(env, remote_addr="10.0.0.9", user=user, password=password)
        assert body["id"] != P2
    assert all(p["auth"] == (user, password) for p in env.api.posts)  # it was used...
    data = _db_bytes(env.store)
    assert REMOTE_SYS.encode() in data  # (the database file does hold what was written)
    assert password.encode() not in data  # ...and never stored
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        assert password not in text
    for exc in (refused.value, unusable.value, conflict.value):
        assert password not in str(exc) and password not in json.dumps(exc.to_dict())


# =============================================================================================
# accept_partner
# =============================================================================================

def test_accept_partner(env):
    answer = env.svc.accept_partner(offer())
    assert answer == {"id": P1, "renewed": False, "system_id": OUR_SYS, "ssh_public_key": OUR_KEY,
                      "ssh_host_key": OUR_HOST,
                      "ssh_port": env.settings.ssh_port, "api_port": env.settings.port}
    (row,) = env.partners().values()
    assert (row.id, row.system_id, row.address, row.api_port, row.ssh_port, row.tls_fingerprint) == \
        (P1, REMOTE_SYS, "10.0.0.2", 8900, 8922, REMOTE_FP)
    assert (row.ssh_public_key, row.ssh_host_key) == (PARTNER_KEY, PARTNER_HOST)
    assert env.ssh.authorized == {P1: (PARTNER_KEY, env.svc.serve_command(P1))}
    assert env.ssh.pinned == {P1: PARTNER_HOST}
    assert env.cert_calls == [("10.0.0.2", 8900)]  # the offering appliance is the one at that address


def test_accept_partner_refuses_itself(env):
    with pytest.raises(ValidationError, match="own partner"):
        env.svc.accept_partner(offer(system_id=OUR_SYS))
    assert env.partners() == {} and env.ssh.authorized == {} and env.cert_calls == []


def test_accept_partner_fingerprint_mismatch(env):
    env.certs[("10.0.0.2", 8900)] = "cd" * 32
    with pytest.raises(ValidationError, match="fingerprint"):
        env.svc.accept_partner(offer())
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}


def test_accept_partner_offering_appliance_unreachable(env):
    env.certs[("10.0.0.2", 8900)] = PartnerApiError("refused")
    with pytest.raises(ValidationError):
        env.svc.accept_partner(offer())
    assert env.partners() == {}


def test_accept_partner_duplicate_id(env):
    env.svc.accept_partner(offer())
    with pytest.raises(ConflictError) as info:
        env.svc.accept_partner(offer(system_id="0f" * 8, ssh_public_key=OTHER_KEY, address="10.0.0.7"))
    assert info.value.status == 409
    (row,) = env.partners().values()
    assert (row.system_id, row.address, row.ssh_public_key) == (REMOTE_SYS, "10.0.0.2", PARTNER_KEY)
    assert env.ssh.authorized[P1][0] == PARTNER_KEY


def test_accept_partner_again_from_the_same_appliance_keeps_its_id(env):
    env.svc.accept_partner(offer())
    answer = env.svc.accept_partner(offer(id=P2, ssh_public_key=OTHER_KEY, address="10.0.0.7"))
    assert (answer["id"], answer["renewed"]) == (P1, True)
    (row,) = env.partners().values()
    assert (row.id, row.address, row.ssh_public_key) == (P1, "10.0.0.7", OTHER_KEY)
    assert set(env.ssh.authorized) == {P1} and env.ssh.authorized[P1][0] == OTHER_KEY


def test_accept_partner_again_while_relationships_use_it_keeps_them(env):
    env.svc.accept_partner(offer())
    rel = env.relationship(env.fs, P1, REPLICA)
    assert env.svc.accept_partner(offer(id=P2))["id"] == P1
    assert set(env.partners()) == {P1} and set(env.rels()) == {rel} and set(env.ssh.authorized) == {P1}


def test_accept_partner_refuses_an_id_another_appliance_has(env):
    env.svc.accept_partner(offer())
    with pytest.raises(ConflictError):
        env.svc.accept_partner(offer(system_id="0f" * 8))
    assert env.partners()[P1].system_id == REMOTE_SYS


@pytest.mark.parametrize("change", [
    {"id": P1.upper()}, {"id": P1[:-1]}, {"id": None}, {"id": "../" + P1[3:]},
    {"system_id": "XYZ"}, {"system_id": None}, {"system_id": "abc"},
    {"address": "-oProxyCommand=x"}, {"address": "a b"}, {"address": ""}, {"address": None},
    {"api_port": 0}, {"api_port": "8900"}, {"ssh_port": 65536}, {"ssh_port": True},
    {"tls_fingerprint": REMOTE_FP.upper()}, {"tls_fingerprint": "ab" * 20}, {"tls_fingerprint": None},
    {"ssh_public_key": 'command="/bin/sh" ' + PARTNER_KEY}, {"ssh_public_key": None},
    {"ssh_host_key": "garbage"}, {"ssh_host_key": PARTNER_HOST.split()[1]},
])
def test_accept_partner_refuses_bad_offers(env, change):
    with pytest.raises(ValidationError):
        env.svc.accept_partner(offer(**change))
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_accept_partner_offer_must_be_an_object(env, body):
    with pytest.raises(ValidationError):
        env.svc.accept_partner(body)


# =============================================================================================
# delete_partner, get/list
# =============================================================================================

def test_delete_partner(env):
    env.partner(P1)
    env.partner(P2, system_id="0f" * 8)
    env.svc.partners.remember_features(P1, ["compressed"])
    env.svc.delete_partner(P1)
    assert set(env.partners()) == {P2}
    assert set(env.ssh.authorized) == {P2} and set(env.ssh.pinned) == {P2}
    assert env.svc.partners.remembered_features(P1) is None  # forgotten with the partner
    (call,) = env.link.calls
    assert (call.op, call.partner_id, call.address, call.port) == ("unpartner", P1, "10.0.0.2", 8922)


def test_delete_partner_with_relationships(env):
    env.partner(P1)
    env.relationship(env.fs, P1)
    with pytest.raises(ConflictError) as info:
        env.svc.delete_partner(P1)
    assert info.value.status == 409
    assert set(env.partners()) == {P1} and env.link.calls == [] and P1 in env.ssh.authorized


def test_delete_partner_unreachable_removes_it_here(env, caplog):
    env.partner(P1)
    env.link.answers["unpartner"] = RemoteError("unreachable over SSH", unreachable=True)
    with caplog.at_level(logging.WARNING, logger="vsnap.services.replication"):
        env.svc.delete_partner(P1)
    assert env.partners() == {} and env.ssh.authorized == {} and env.ssh.pinned == {}
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_delete_partner_refused_by_the_partner(env):
    env.partner(P1)
    env.link.answers["unpartner"] = RemoteError("partner 10.0.0.2 refused unpartner: relationships exist")
    with pytest.raises(ConflictError, match="relationships exist"):
        env.svc.delete_partner(P1)
    assert set(env.partners()) == {P1} and P1 in env.ssh.authorized and P1 in env.ssh.pinned


def test_delete_partner_that_no_longer_knows_us_removes_it_here(env):
    env.partner(P1)
    env.link.answers["unpartner"] = RemoteError("This appliance no longer knows that partner", unknown=True)
    env.svc.delete_partner(P1)
    assert env.partners() == {} and env.ssh.authorized == {}


def test_delete_partner_first_tells_it_of_relationships_deleted_while_it_was_away(env):
    env.partner(P1)
    env.svc.partners.remember_notice(P1, R1)
    env.svc.delete_partner(P1)
    assert [(c.op, c.args) for c in env.link.calls] == [("delete-relationship", [R1, "1"]), ("unpartner", [])]
    with env.store.session() as s:
        assert s.get(Setting, env.svc.partners._notice_key(P1, R1)) is None


@pytest.mark.parametrize("error, trust", [(None, "OK"), (RemoteError("refused", untrusted=True), "REFUSED"),
                                          (RemoteError("gone", unknown=True), "REFUSED"),
                                          (RemoteError("no route", unreachable=True), "UNREACHABLE")])
def test_partner_details_say_whether_the_trust_works(env, error, trust):
    env.partner(P1)
    if error is not None:
        env.link.answers["info"] = error
    body = env.svc.get_partner(P1, check_trust=True)
    assert body["trust_status"] == trust and (body["trust_message"] is None) == (error is None)
    assert "trust_status" not in env.svc.get_partner(P1) and env.link.ops() == ["info"]


@pytest.mark.parametrize("partner_id", [P2, "nope", P1.upper() + "0", "", None, 5])
def test_unknown_partner(env, partner_id):
    env.partner(P1)
    with pytest.raises(NotFoundError):
        env.svc.get_partner(partner_id)
    with pytest.raises(NotFoundError):
        env.svc.delete_partner(partner_id)
    assert set(env.partners()) == {P1}


def test_get_partner_id_is_case_insensitive(env):
    env.partner(P1)
    assert env.svc.get_partner(P1.upper())["id"] == P1


def test_list_partners_render(env):
    env.partner(P1)
    (body,) = env.svc.list_partners()
    assert set(body) == {"id", "address", "api_port", "ssh_port", "time_created", "time_updated"}
    assert (body["id"], body["address"], body["api_port"], body["ssh_port"]) == (P1, "10.0.0.2", "8900", "8922")
    assert "ssh_public_key" not in body and "tls_fingerprint" not in body


# =============================================================================================
# notices and addresses kept per partner
# =============================================================================================

@pytest.mark.parametrize("error, kept", [
    (RemoteError("no route", unreachable=True), True),
    (RemoteError("the appliance's server stopped while answering", refused=False), True),
    (RemoteError("Permission denied (publickey)", untrusted=True), False),
    (RemoteError("Relationship not found", unknown=True), False),
    (RemoteError("refused"), False),
])
def test_a_notice_is_kept_until_the_partner_answers(env, error, kept):
    env.partner(P1)
    env.svc.partners.remember_notice(P1, R1)
    env.link.answers["delete-relationship"] = error
    env.svc.deliver_notices()
    with env.store.session() as s:
        assert (s.get(Setting, env.svc.partners._notice_key(P1, R1)) is not None) == kept


def test_partnering_again_keeps_the_partnerships_addresses(env):
    env.partner(P2, system_id=REMOTE_SYS)
    env.svc.partners.remember_addresses(P2, ["10.9.0.2"])
    assert create(env)["id"] == P2  # the same appliance again: the same partnership
    assert env.svc.partners.remembered_addresses(P2) == ["10.9.0.2"]
