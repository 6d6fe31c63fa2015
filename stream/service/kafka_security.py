"""The Kafka settings as client arguments: security protocol, TLS context, SASL credentials.

Every Kafka client driftwatch creates takes its connection arguments from here, so that a
worker, the CLI tools and the tests connect the same way: ``client_options`` for aiokafka's
``AIOKafkaConsumer``, ``AIOKafkaProducer`` and ``AIOKafkaAdminClient``, and
``broker_credentials`` for ``faust.App(broker_credentials=...)``, which Faust's aiokafka
driver turns into the same arguments for its own consumer and producer
(``faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth``).

The settings were checked when loaded (a SASL mechanism needs a SASL protocol, the files
exist...); a certificate or key that is not valid PEM fails here with the field named.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from stream.exceptions import ConfigError
from stream.service.config import SASL_PROTOCOLS, TLS_PROTOCOLS, KafkaSettings, Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments that connect any aiokafka client as the settings say.

    >>> client_options(Settings())
    {'bootstrap_servers': '127.0.0.1:9092', 'security_protocol': 'PLAINTEXT'}
    """
    kafka = settings.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": kafka.security_protocol,
    }
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if kafka.security_protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = _sasl_password(settings)
    return options


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """The credentials of ``faust.App(broker_credentials=...)``; None for PLAINTEXT.

    Faust's ``SASLCredentials`` means SASL_SSL when it carries an SSL context and
    SASL_PLAINTEXT otherwise, and takes any mechanism Faust knows (SCRAM included).

    >>> broker_credentials(Settings()) is None
    True
    """
    kafka = settings.kafka
    context = ssl_context(kafka)
    if kafka.security_protocol in SASL_PROTOCOLS:
        return SASLCredentials(
            username=kafka.sasl_username,
            password=_sasl_password(settings),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): the brokers' certificates are
    verified against ``ssl_cafile`` (or the system's CAs), with hostname checking unless
    ``ssl_check_hostname`` is off, and ``ssl_certfile``/``ssl_keyfile`` presented for mTLS.

    >>> ssl_context(KafkaSettings(security_protocol="SSL")).check_hostname
    True
    """
    if kafka.security_protocol not in TLS_PROTOCOLS:
        return None
    try:
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"invalid config field 'kafka.ssl_cafile' (got {kafka.ssl_cafile!r}): {exc}"
        ) from None
    context.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile is not None:
        try:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"invalid config field 'kafka.ssl_certfile' (got {kafka.ssl_certfile!r}) or "
                f"'kafka.ssl_keyfile' (got {kafka.ssl_keyfile!r}): {exc}"
            ) from None
    return context


def _sasl_password(settings: Settings) -> str:
    secret = settings.kafka_sasl_password
    return secret.get_secret_value() if secret is not None else ""
