"""The HTTP side of the vsnap command: one small client over a swappable transport, and the
TLS decision (CA file, or the appliance's own certificate pinned by fingerprint)."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

CONNECT_TIMEOUT = 10


class ApiError(Exception):
    """An error answer of the API: its status, message and type."""

    def __init__(self, status: int, message: str, type_: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_


class ConnectionFailure(Exception):
    """No answer: refused, unreachable, timed out, or the TLS check failed."""


class ConfigError(Exception):
    """A local problem: settings, the config file, the CA file (exit 2)."""


@dataclass
class Reply:
    status: int
    text: str
    headers: dict = field(default_factory=dict)


@dataclass
class Result:
    """A successful answer: the decoded body, and its text exactly as the API sent it."""
    data: Any  # what json.loads gives: the API's answer (an object, for every route the CLI calls)
    text: str


# -- TLS -------------------------------------------------------------------------------------
PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _host_matches(host: str, sans) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for kind, value in sans:
        value = value.strip()
        if kind == "IP Address" and ip is not None:
            try:
                if ipaddress.ip_address(value) == ip:
                    return True
            except ValueError:
                continue
        elif kind == "DNS" and ip is None:
            pattern, name = value.lower(), host.lower().rstrip(".")
            if pattern == name:
                return True
            if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
                return True
    return False


def tls_settings(url: str, ca: str | None, insecure: bool) -> tuple[object, str | None]:
    """-> (requests' `verify`, SHA-256 fingerprint to pin or None).

    A CA file holding one certificate is normally the appliance's self-signed one
    ($VSNAP_STATE/tls/vsnap.crt). Its names are the host name, localhost and 127.0.0.1; reached
    by any other address, the name check would fail, so then the certificate is pinned instead:
    the chain is still verified against the file, and the server must present exactly that
    certificate (its SHA-256 fingerprint), which is a stronger check than a name."""
    if insecure:
        return False, None
    if not ca:
        return True, None  # the system's trust store
    try:
        with open(ca, encoding="ascii", errors="replace") as f:
            pem = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the CA file {ca}: {exc.strerror or exc}") from None
    blocks = PEM_CERT.findall(pem)
    if not blocks:
        raise ConfigError(f"{ca} holds no PEM certificate")
    if len(blocks) != 1:
        return ca, None
    der = ssl.PEM_cert_to_DER_cert(blocks[0])
    fingerprint = hashlib.sha256(der).hexdigest()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"{ca} is not a usable certificate: {exc}") from None
    decoded = ctx.get_ca_certs()  # only certificates marked as CAs are listed
    if not decoded:
        return ca, fingerprint  # a plain server certificate: it can only be meant as a pin
    sans = decoded[0].get("subjectAltName", ())
    host = urlsplit(url).hostname or ""
    if sans and not _host_matches(host, sans):
        return ca, fingerprint
    return ca, None


class PinningAdapter(HTTPAdapter):
    """Chain verification as usual, and the server's certificate must have this fingerprint
    (urllib3 then skips the host name check: the pin is the identity check)."""

    def __init__(self, fingerprint: str, **kwargs):
        self.fingerprint = fingerprint
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["assert_fingerprint"] = self.fingerprint
        super().init_poolmanager(*args, **kwargs)


# -- transport -------------------------------------------------------------------------------
class RequestsTransport:
    """Sends one request with requests; tests replace it with a fake of the same `send`."""

    def __init__(self, *, verify, pin: str | None = None):
        self.session = requests.Session()
        # The appliance is addressed directly: no proxy or CA bundle from the environment.
        self.session.trust_env = False
        self.session.verify = verify
        self.pin = pin
        if pin:
            self.session.mount("https://", PinningAdapter(pin))

    def send(self, method: str, url: str, *, params=None, json=None, auth=None,
             timeout: float | None = None) -> Reply:
        try:
            response = self.session.request(method, url, params=params, json=json, auth=auth,
                                            timeout=(CONNECT_TIMEOUT, timeout))
        except requests.exceptions.SSLError as exc:
            reason = _root_reason(exc)
            if self.pin and "fingerprint" in reason.lower():
                reason = "the server's certificate is not the one in the CA file (fingerprint differs)"
            raise ConnectionFailure(
                f"TLS verification of {url} failed: {reason}. Pass --ca with the appliance's "
                f"certificate ($VSNAP_STATE/tls/vsnap.crt on the appliance), or --insecure "
                f"(not recommended)") from None
        except requests.exceptions.Timeout:
            raise ConnectionFailure(f"no answer from {url} within {timeout}s (raise it with --timeout)") from None
        except requests.exceptions.ConnectionError as exc:
            raise ConnectionFailure(f"cannot connect to {_origin(url)}: {_root_reason(exc)} "
                                    "(is the vsnap server running? check --url)") from None
        except requests.exceptions.RequestException as exc:
            raise ConnectionFailure(f"request to {url} failed: {exc}") from None
        return Reply(response.status_code, response.text, dict(response.headers))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _root_reason(exc: BaseException) -> str:
    """The innermost cause's text: 'Connection refused' rather than urllib3's wrappers."""
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        reason = getattr(exc, "reason", None)
        if nxt is None and isinstance(reason, BaseException):
            nxt = reason
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(exc))
        exc = nxt
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return match.group(1).strip() if match else text


# -- client ----------------------------------------------------------------------------------
class Client:
    """The API at `base_url` with HTTP basic auth: returns a Result, raises ApiError for an
    error answer and ConnectionFailure when there is none."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None, transport, *,
                 timeout: float = 600):
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.transport = transport
        self.timeout = timeout

    def request(self, method: str, path: str, *, params: dict | None = None,
                body: dict | None = None) -> Result:
        url = self.base_url + path
        reply = self.transport.send(method, url, params=params or None, json=body, auth=self.auth,
                                    timeout=self.timeout)
        try:
            data = json.loads(reply.text) if reply.text.strip() else None
        except ValueError:
            data = None
        if reply.status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and error.get("message"):
                message, type_ = str(error["message"]), str(error.get("type") or "Error")
            else:
                snippet = " ".join(reply.text.split())[:200]
                message, type_ = f"HTTP {reply.status} from {method} {path}" + (
                    f": {snippet}" if snippet else ""), "HTTPError"
            retry = {k.lower(): v for k, v in reply.headers.items()}.get("retry-after")
            if retry and reply.status == 429:
                message += f" (retry after {retry}s)"
            raise ApiError(reply.status, message, type_)
        if data is None and reply.text.strip():
            raise ApiError(reply.status, f"the answer to {method} {path} is not JSON", "HTTPError")
        return Result(data if data is not None else {}, reply.text)

    def get(self, path: str, params: dict | None = None) -> Result:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict | None = None) -> Result:
        return self.request("POST", path, body=body if body is not None else {})

    def put(self, path: str, body: dict) -> Result:
        return self.request("PUT", path, body=body)

    def delete(self, path: str, params: dict | None = None) -> Result:
        return self.request("DELETE", path, params=params)
