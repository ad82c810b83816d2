"""HTTPS only, TLS 1.2 or newer, no weak ciphers."""
from __future__ import annotations

import re
import socket
import ssl
import subprocess

import pytest


def _handshake(port: int, *, version: ssl.TLSVersion | None = None, ciphers: str | None = None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.version(), tls.cipher()


def test_tls12_and_tls13_are_accepted(appliance):
    assert _handshake(appliance.port, version=ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
    assert _handshake(appliance.port, version=ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(appliance, version):
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(appliance.port, version=version, ciphers="ALL:@SECLEVEL=0")
    # The server must be the one refusing, not our client failing to offer the version.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(caught.value)


@pytest.mark.parametrize("cipher", ["AES128-SHA", "DES-CBC3-SHA", "ECDHE-RSA-AES128-SHA"])
def test_weak_ciphers_are_refused(appliance, cipher):
    try:  # a cipher this OpenSSL lacks fails in our client, which would prove nothing
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(cipher + ":@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip(f"this OpenSSL has no {cipher}: neither side can negotiate it")
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(appliance.port, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher + ":@SECLEVEL=0")
    assert "NO_CIPHERS_AVAILABLE" not in str(caught.value)


# -- the same, seen by openssl s_client, one cipher family and one cipher at a time -------------
STRONG_TLS12 = re.compile(r"(ECDHE|DHE)-(RSA|ECDSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)")
STRONG_TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
WEAK_FAMILIES = ["NULL", "eNULL", "aNULL", "EXPORT", "LOW", "DES", "3DES", "RC4", "RC2", "IDEA", "SEED",
                 "MD5", "PSK", "SRP", "DSS", "kRSA", "CAMELLIA", "ARIA", "SHA1", "AESCCM8"]


def s_client(port: int, *args: str) -> tuple[bool, str]:
    """A handshake with openssl s_client: (whether a cipher was agreed, the output)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                          *args], input="", capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    m = re.search(r"Cipher is (\S+)", text)
    return bool(m and m.group(1) != "(NONE)" and out.returncode == 0), text


def client_ciphers(spec: str) -> list[str]:
    """The TLS 1.2 ciphers this openssl can offer for a cipher string (empty when none)."""
    out = subprocess.run(["openssl", "ciphers", "-tls1_2", "-s", f"{spec}:@SECLEVEL=0"],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return []
    return [c for c in out.stdout.strip().split(":") if c and not c.startswith("TLS_")]


def test_s_client_handshakes_with_tls12_and_tls13(appliance):
    # The checks below see a refusal as "no cipher agreed": here they see an agreement.
    ok, text = s_client(appliance.port, "-tls1_2")
    assert ok and "TLSv1.2" in text, text[-800:]
    ok, text = s_client(appliance.port, "-tls1_3")
    assert ok and "TLSv1.3" in text, text[-800:]


@pytest.mark.parametrize("option", ["-tls1", "-tls1_1"])
def test_s_client_old_versions_are_refused(appliance, option):
    ok, text = s_client(appliance.port, option, "-cipher", "ALL:@SECLEVEL=0")
    assert not ok, text[-800:]
    assert "no protocols available" not in text  # the client did offer the version


@pytest.mark.parametrize("family", WEAK_FAMILIES)
def test_s_client_weak_cipher_families_are_refused(appliance, family):
    offered = client_ciphers(family)
    if not offered:
        pytest.skip(f"openssl offers no {family} cipher in a plain handshake here (not in this build; PSK "
                    "and SRP need a key or login the server does not have): nothing to negotiate")
    ok, text = s_client(appliance.port, "-tls1_2", "-cipher", f"{family}:@SECLEVEL=0")
    assert not ok, f"{family} accepted: {text[-800:]}"


def test_every_tls12_cipher_the_server_accepts_is_strong(appliance):
    offered = client_ciphers("ALL:COMPLEMENTOFALL")
    assert len(offered) > 50
    accepted = [c for c in offered if s_client(appliance.port, "-tls1_2", "-cipher", f"{c}:@SECLEVEL=0")[0]]
    assert accepted, "no TLS 1.2 cipher at all"
    assert [c for c in accepted if not STRONG_TLS12.fullmatch(c)] == []


def test_every_tls13_suite_the_server_accepts_is_strong(appliance):
    suites = STRONG_TLS13 | {"TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"}
    accepted = {s for s in suites if s_client(appliance.port, "-tls1_3", "-ciphersuites", s)[0]}
    assert accepted and accepted <= STRONG_TLS13, accepted
