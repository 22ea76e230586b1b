"""TLS for ``amqps://`` and ``rediss://``: the options each library takes, from the settings.

One place turns ``TENSORFLEET_TLS_CA_FILE``, ``TENSORFLEET_TLS_CERT_FILE`` and
``TENSORFLEET_TLS_KEY_FILE`` into what pika (the client), kombu/py-amqp (Celery
on the workers) and redis-py (the store) each expect. Every server is verified
(certificate chain and host name) against the CA file, or the system's CAs when
it is unset; the client certificate is presented when set. Plain ``amqp://`` and
``redis://`` URLs get no TLS options: TLS is chosen by the URL's scheme.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import pika

from broker.amqp import pika_url
from broker.settings import Settings


def broker_uses_tls(settings: Settings) -> bool:
    return urlsplit(settings.broker_url).scheme == "amqps"


def store_uses_tls(url: str) -> bool:
    return urlsplit(url).scheme == "rediss"


def client_context(settings: Settings) -> ssl.SSLContext:
    """A client-side context: verify the server against the CA file; our certificate if set."""
    context = ssl.create_default_context(cafile=settings.tls_ca_file)
    if settings.tls_cert_file is not None:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def pika_parameters(settings: Settings) -> pika.URLParameters:
    """pika's connection parameters for the broker URL, with TLS options for ``amqps://``."""
    parameters = pika.URLParameters(pika_url(settings.broker_url))
    if broker_uses_tls(settings):
        host = urlsplit(settings.broker_url).hostname or "localhost"
        parameters.ssl_options = pika.SSLOptions(client_context(settings), server_hostname=host)
    return parameters


def kombu_ssl(settings: Settings) -> dict[str, Any] | bool:
    """kombu's ``ssl`` (Celery's ``broker_use_ssl``) for the broker URL; False for ``amqp://``."""
    if not broker_uses_tls(settings):
        return False
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": urlsplit(settings.broker_url).hostname or "localhost",
    }
    if settings.tls_ca_file is not None:
        options["ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file is not None:
        options["certfile"] = settings.tls_cert_file
        options["keyfile"] = settings.tls_key_file
    return options


def redis_ssl_kwargs(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py's ``ssl_*`` keyword arguments for a ``rediss://`` URL (none for ``redis://``)."""
    if not store_uses_tls(url):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.tls_ca_file is not None:
        options["ssl_ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file is not None:
        options["ssl_certfile"] = settings.tls_cert_file
        options["ssl_keyfile"] = settings.tls_key_file
    return options
