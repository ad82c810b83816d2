"""gunicorn settings for `make run`: HTTPS on VSNAP_PORT, TLS 1.2+ with strong ciphers only."""
import os
import ssl

from vsnap.config import Settings

_settings = Settings.from_env()

bind = os.environ.get("VSNAP_BIND", f"0.0.0.0:{_settings.port}")
worker_class = "gthread"
workers = int(os.environ.get("VSNAP_WORKERS", "2"))
threads = int(os.environ.get("VSNAP_THREADS", "8"))
timeout = 600  # storage calls can be slow; the command runner has its own timeouts
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
if os.environ.get("VSNAP_PLAIN_HTTP") != "1":  # nginx in front terminates TLS in production
    certfile = str(_settings.tls_cert)
    keyfile = str(_settings.tls_key)


def ssl_context(conf, default_ssl_context_factory):
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!DSS:!RC4:!3DES")
    return context
