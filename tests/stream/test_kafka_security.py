"""The Kafka settings as client arguments (stream/service/kafka_security.py), without I/O:
the options of each security protocol and SASL mechanism, the TLS context, and the errors
that name the field. The certificates are made by openssl in a temporary directory."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.client import AIOKafkaClient
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr

from stream.exceptions import ConfigError
from stream.service.config import KafkaSettings, Settings, load_settings
from stream.service.kafka_security import broker_credentials, client_options, ssl_context

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD = "pw-not-in-any-message"  # noqa: S105 - a test value, searched for in messages
SECURITY_KEYS = ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                 "sasl_plain_password")  # fmt: skip


@dataclass(frozen=True)
class Pki:
    """A CA, a certificate it signs with its key, a key of another pair, a file of no PEM."""

    ca: str
    cert: str
    key: str
    other_key: str
    not_pem: str


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=driftwatch unit CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-subj", "/CN=client", "-keyout", "client.key", "-out", "client.csr",
             cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "client.pem", cwd=d)  # fmt: skip
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "other.key", cwd=d)  # fmt: skip
    (d / "notes.txt").write_text("not a certificate\n")
    return Pki(*(str(d / n) for n in ("ca.pem", "client.pem", "client.key", "other.key",
                                      "notes.txt")))  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DRIFTWATCH_"):
            monkeypatch.delenv(key)


def settings(protocol: str, mechanism: str | None = None, **tls: object) -> Settings:
    sasl = protocol.startswith("SASL_")
    kafka = KafkaSettings.model_validate(
        {
            "bootstrap": "broker:9093",
            "security_protocol": protocol,
            "sasl_mechanism": mechanism,
            "sasl_username": "svc" if sasl else None,
            **tls,
        }
    )
    return Settings(kafka=kafka, kafka_sasl_password=SecretStr(PASSWORD) if sasl else None)


# -- options per protocol -------------------------------------------------------------------


def test_plaintext_has_no_security_arguments() -> None:
    s = settings("PLAINTEXT")
    assert client_options(s) == {
        "bootstrap_servers": "broker:9093",
        "security_protocol": "PLAINTEXT",
    }
    assert broker_credentials(s) is None
    assert ssl_context(s.kafka) is None


def test_ssl_has_a_verifying_context_and_no_sasl(pki: Pki) -> None:
    s = settings("SSL", ssl_cafile=pki.ca)
    options = client_options(s)
    assert set(options) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "driftwatch unit CA"),),)
    ]
    credentials = broker_credentials(s)
    assert isinstance(credentials, SSLCredentials)
    faust = credentials_to_aiokafka_auth(credentials)
    assert faust["security_protocol"] == "SSL"
    assert faust["ssl_context"].get_ca_certs() == context.get_ca_certs()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_plaintext_has_credentials_and_no_tls(mechanism: str) -> None:
    s = settings("SASL_PLAINTEXT", mechanism)
    options = client_options(s)
    assert options == {
        "bootstrap_servers": "broker:9093",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc",
        "sasl_plain_password": PASSWORD,
    }
    credentials = broker_credentials(s)
    assert isinstance(credentials, SASLCredentials)
    faust = credentials_to_aiokafka_auth(credentials)
    assert faust["ssl_context"] is None
    assert {k: faust[k] for k in SECURITY_KEYS} == {k: options[k] for k in SECURITY_KEYS}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_ssl_has_credentials_and_tls(pki: Pki, mechanism: str) -> None:
    s = settings("SASL_SSL", mechanism, ssl_cafile=pki.ca)
    options = client_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", PASSWORD)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = broker_credentials(s)
    assert isinstance(credentials, SASLCredentials)
    faust = credentials_to_aiokafka_auth(credentials)
    assert faust["ssl_context"] is not None
    assert {k: faust[k] for k in SECURITY_KEYS} == {k: options[k] for k in SECURITY_KEYS}


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("PLAINTEXT", None), ("SSL", None)]
    + [(p, m) for p in ("SASL_PLAINTEXT", "SASL_SSL") for m in MECHANISMS],
)
async def test_aiokafka_accepts_the_options(pki: Pki, protocol: str, mechanism: str | None) -> None:
    """aiokafka's client checks the combination when it is built (no connection yet)."""
    tls = {"ssl_cafile": pki.ca} if protocol in ("SSL", "SASL_SSL") else {}
    client = AIOKafkaClient(**client_options(settings(protocol, mechanism, **tls)))
    try:
        assert client._security_protocol == protocol
        if mechanism is not None:
            assert client._sasl_mechanism == mechanism
    finally:
        await client.close()


# -- the TLS context --------------------------------------------------------------------------


def test_hostname_checking_is_on_by_default_and_can_be_turned_off(pki: Pki) -> None:
    on = ssl_context(settings("SSL", ssl_cafile=pki.ca).kafka)
    off = ssl_context(settings("SSL", ssl_cafile=pki.ca, ssl_check_hostname=False).kafka)
    assert on is not None and off is not None
    assert on.check_hostname and not off.check_hostname
    assert on.verify_mode == off.verify_mode == ssl.CERT_REQUIRED  # still verified


def test_client_certificate_loads(pki: Pki) -> None:
    s = settings("SSL", ssl_cafile=pki.ca, ssl_certfile=pki.cert, ssl_keyfile=pki.key)
    assert ssl_context(s.kafka) is not None


@pytest.mark.parametrize(
    ("tls", "field"),
    [
        ({"ssl_certfile": "not_pem"}, "kafka.ssl_certfile"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "other_key"}, "kafka.ssl_keyfile"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "not_pem"}, "kafka.ssl_keyfile"),
        ({"ssl_cafile": "not_pem"}, "kafka.ssl_cafile"),
    ],
)
def test_unusable_pem_files_name_the_field(pki: Pki, tls: dict[str, str], field: str) -> None:
    paths = {key: getattr(pki, name) for key, name in tls.items()}
    s = settings("SASL_SSL", "SCRAM-SHA-512", **paths)
    for build in (lambda: client_options(s), lambda: broker_credentials(s)):
        with pytest.raises(ConfigError) as info:
            build()
        message = str(info.value)
        assert f"'{field}'" in message and paths[field.split(".")[1]] in message
        assert PASSWORD not in message


# -- settings that cannot apply stop start-up naming the field --------------------------------


def _load(tmp_path: Path, kafka_toml: str) -> Settings:
    path = tmp_path / "driftwatch.toml"
    path.write_text(f"[kafka]\n{kafka_toml}\n")
    return load_settings(path)


@pytest.mark.parametrize(
    ("kafka_toml", "password", "field", "expected"),
    [
        ('sasl_mechanism = "PLAIN"', None, "kafka.sasl_mechanism",
         "applies only with security_protocol SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"),
        ('security_protocol = "SSL"\nsasl_mechanism = "SCRAM-SHA-512"', None,
         "kafka.sasl_mechanism", "not SSL"),
        ('security_protocol = "SASL_SSL"\nsasl_username = "svc"', PASSWORD,
         "kafka.sasl_mechanism", "security_protocol SASL_SSL needs kafka.sasl_mechanism"),
        ('security_protocol = "SSL"\nssl_cafile = "/nonexistent/ca.pem"', None,
         "kafka.ssl_cafile", "'/nonexistent/ca.pem' does not exist"),
        ('ssl_cafile = "CA"', None, "kafka.ssl_cafile",
         "applies only with security_protocol SSL or SASL_SSL, not PLAINTEXT"),
        ('security_protocol = "SSL"', PASSWORD, "kafka_sasl_password",
         "applies only with kafka.security_protocol SASL_PLAINTEXT or SASL_SSL, not SSL"),
        ('security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"',
         None, "kafka_sasl_password", "DRIFTWATCH_KAFKA_SASL_PASSWORD"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka_toml: str,
    password: str | None,
    field: str,
    expected: str,
) -> None:
    if password is not None:
        monkeypatch.setenv("DRIFTWATCH_KAFKA_SASL_PASSWORD", password)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, kafka_toml.replace('"CA"', f'"{pki.ca}"'))
    message = str(info.value)
    assert f"invalid config field '{field}'" in message and expected in message
    assert PASSWORD not in message


def test_a_consistent_secured_configuration_loads(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same file as the failing ones above, with every field fitting: no error."""
    monkeypatch.setenv("DRIFTWATCH_KAFKA_SASL_PASSWORD", PASSWORD)
    s = _load(
        tmp_path,
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\n'
        f'sasl_username = "svc"\nssl_cafile = "{pki.ca}"\nssl_certfile = "{pki.cert}"\n'
        f'ssl_keyfile = "{pki.key}"',
    )
    assert client_options(s)["sasl_mechanism"] == "SCRAM-SHA-256"
    assert "pw-not" not in repr(s) and PASSWORD not in str(s.redacted())
