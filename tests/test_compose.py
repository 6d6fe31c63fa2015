"""docker-compose.yml agrees with the configuration defaults, and docker-compose.secure.yml
with the settings, the README and the secured test broker (Docker cannot run here)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from stream.service.config import SECRET_FIELDS, Settings
from stream.service.kafka_access import Acl, required_acls
from stream.service.kafka_security import ssl_context
from stream.service.redis_client import acl_rules

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _host_ports(service: dict) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        host, container = str(spec).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def test_services_present(compose: dict) -> None:
    assert {"kafka", "redis", "worker", "prometheus", "grafana", "demo"} <= set(compose["services"])
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert (REPO / "Dockerfile").exists()


def test_host_ports_match_default_config(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("DRIFTWATCH_"):
            monkeypatch.delenv(key)
    defaults = Settings()
    kafka_port = int(defaults.kafka.bootstrap.rsplit(":", 1)[1])
    redis_port = urlparse(defaults.redis.url).port
    metrics_port = int(defaults.worker.metrics_address.rsplit(":", 1)[1])
    svc = compose["services"]
    assert kafka_port in _host_ports(svc["kafka"]).values()
    advertised = svc["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"localhost:{kafka_port}" in advertised
    assert _host_ports(svc["redis"]) == {redis_port: redis_port}
    assert _host_ports(svc["worker"]) == {metrics_port: metrics_port}


def test_worker_environment_is_valid_config(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = compose["services"]
    for name in ("worker", "demo"):
        env = svc[name]["environment"]
        for key, value in env.items():
            monkeypatch.setenv(
                key, str(value).replace("${DRIFTWATCH_SNAPSHOT_KEY:-change-me}", "k")
            )
        settings = Settings()
        host, port = settings.kafka.bootstrap.split(":")
        assert host == "kafka"
        advertised = svc["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert f"kafka:{port}" in advertised
        assert urlparse(settings.redis.url).hostname == "redis"


def test_prometheus_scrapes_the_worker_metrics_port(compose: dict) -> None:
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    metrics = compose["services"]["worker"]["environment"]["DRIFTWATCH_WORKER__METRICS_ADDRESS"]
    assert f"worker:{metrics.rsplit(':', 1)[1]}" in targets
    mounts = compose["services"]["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus/prometheus.yml:") for m in mounts)
    for mount in compose["services"]["grafana"]["volumes"]:
        assert (REPO / mount.split(":")[0]).exists()


# -- docker-compose.secure.yml: SASL_SSL, TLS Redis, ACL users --------------------------------

SECRETS_DIR = "/run/secrets/"
OPENSSL = shutil.which("openssl") or "openssl"  # the `generated` fixture skips without it
# The variables the apache/kafka image's start script (docker/resources/common-scripts/
# configureDefaults) fills in when unset: the override's own format step renders the
# variables before that script runs, so every one of them must be set explicitly.
IMAGE_DEFAULTS = (
    "CLUSTER_ID", "KAFKA_NODE_ID", "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_LISTENERS",
    "KAFKA_ADVERTISED_LISTENERS", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_PROCESS_ROLES",
    "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_INTER_BROKER_LISTENER_NAME",
    "KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_LOG_DIRS",
)  # fmt: skip
# KafkaDockerWrapper.scala: environment variables that are not server properties
NOT_PROPERTIES = ("KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS",
                  "KAFKA_JMX_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS")  # fmt: skip


@pytest.fixture(scope="module")
def secure() -> dict:
    return yaml.safe_load((REPO / "docker-compose.secure.yml").read_text())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch repository root after the README's commands that make deploy/secrets/."""
    bash, openssl = shutil.which("bash"), shutil.which("openssl")
    if bash is None or openssl is None:
        pytest.skip("the README's commands need bash and openssl")
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = [b for b in blocks if "deploy/secrets" in b]
    assert len(commands) == 1, "the README has one block of commands making deploy/secrets/"
    root = tmp_path_factory.mktemp("repo")
    subprocess.run([bash, "-euo", "pipefail", "-c", commands[0]], cwd=root, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return root


def _interpolated(value: object) -> str:
    """A compose value after interpolation: ``$$`` is ``$``, ``${X:-default}`` its default."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    assert not re.search(r"\$(?!\$)\{?[A-Za-z]", text.replace("$$", "")), text
    return text.replace("$$", "$")


def _merged(base: dict, override: dict) -> dict:
    """Two compose service definitions merged as compose does (compose-spec merge rules)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        elif key in ("secrets", "ports", "volumes") and key in out:
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:  # scalars, command, entrypoint, healthcheck test: replaced
            out[key] = value
    return out


def _service(compose: dict, secure: dict, name: str) -> dict:
    return _merged(compose["services"].get(name, {}), secure["services"][name])


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [str(node)]


def _mounted(secure: dict, service: dict, generated: Path, into: Path) -> Path:
    """The service's /run/secrets/: exactly the secrets it lists, as generated."""
    into.mkdir()
    for name in service.get("secrets", []):
        source = generated / secure["secrets"][name]["file"]
        assert source.is_file(), f"secret {name}: {source.name} is not made by the README"
        (into / name).symlink_to(source)
    return into


def _localized(text: str, secrets: Path) -> str:
    return text.replace(SECRETS_DIR, f"{secrets}/")


def _run(argv: list[str], env: dict[str, str], shims: dict[str, str], tmp: Path) -> None:
    """Run a service's command line with the programs of ``shims`` replaced by scripts."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for program, body in shims.items():
        shim = bin_dir / Path(program).name
        shim.write_text(f"#!/bin/sh\n{body}\n")
        shim.chmod(0o755)
        argv = [a.replace(program, str(shim)) if "/" in program else a for a in argv]
    env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(argv, env=env, check=True, timeout=30)


def _properties(env: dict[str, str]) -> dict[str, str]:
    """server.properties as the apache/kafka image renders KAFKA_* variables (its docs:
    KAFKA_ prefix dropped, _ is ., __ is _, ___ is -)."""
    out = {}
    for key, value in env.items():
        if key.startswith("KAFKA_") and key not in NOT_PROPERTIES:
            name = key.removeprefix("KAFKA_").lower().replace("_", ".")
            out[name.replace("...", "-").replace("..", "_")] = value
    return out


def _kafka_env(compose: dict, secure: dict) -> dict[str, str]:
    env = _service(compose, secure, "kafka")["environment"]
    return {k: _interpolated(v) for k, v in env.items()}


def _listeners(props: dict[str, str], key: str) -> dict[str, str]:
    """listener name -> host:port of ``listeners`` or ``advertised.listeners``."""
    return dict(item.split("://") for item in props[key].split(","))


@pytest.fixture(scope="module")
def services_py() -> Any:
    """scripts/services.py as a module (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("services", REPO / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services"] = module  # its dataclasses look it up while they are made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["services"]
    return module


def _scram_users(secure: dict) -> dict[str, str]:
    """user -> the secret holding its password, from the broker's format step."""
    script = _interpolated(secure["services"]["kafka"]["command"][-1])
    found = re.findall(
        r"SCRAM-SHA-512=\[name=(\w+),password=\$\(cat /run/secrets/(\w+)\)\]", script
    )
    assert found, "the broker's format step adds SCRAM-SHA-512 users"
    return dict(found)


def test_secure_secrets_are_generated_and_mounted(
    compose: dict, secure: dict, generated: Path
) -> None:
    secrets = generated / "deploy" / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    assert (secrets / ".gitignore").read_text() == "*\n"  # never committed
    assert (secrets / "ca.key").stat().st_mode & 0o777 == 0o600  # signs, is never mounted
    assert "ca.key" not in {Path(s["file"]).name for s in secure["secrets"].values()}
    for name, spec in secure["secrets"].items():
        assert (generated / spec["file"]).is_file(), f"secret {name} is not made by the README"
    for name, definition in secure["services"].items():
        service = _service(compose, secure, name)
        used = {m for s in _strings(service) for m in re.findall(r"/run/secrets/(\w+)", s)}
        assert used <= set(service.get("secrets", [])), f"{name} reads unmounted secrets"
        assert set(definition.get("secrets", [])) <= set(secure["secrets"])
    ca = secrets / "ca.pem"
    for cert in ("server.pem", "client.pem"):
        verify = subprocess.run([OPENSSL, "verify", "-CAfile", ca, secrets / cert],
                                capture_output=True, text=True, check=False)  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr


def _client_settings(
    compose: dict, secure: dict, generated: Path, name: str, tmp: Path, mp: pytest.MonkeyPatch
) -> tuple[Settings, Path]:
    """The settings of service ``name`` as its container sees them: its environment, then
    its entrypoint run on its mounted secrets (``driftwatch`` replaced by an env dump)."""
    for key in list(os.environ):
        if key.startswith("DRIFTWATCH_"):
            mp.delenv(key)
    service = _service(compose, secure, name)
    mounted = _mounted(secure, service, generated, tmp / "secrets")
    env = {k: _localized(_interpolated(v), mounted) for k, v in service["environment"].items()}
    argv = [_localized(_interpolated(a), mounted) for a in service["entrypoint"]]
    dump = tmp / "env.json"
    shim = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))' > {dump}"
    _run([*argv, *service["command"]], env, {"driftwatch": shim}, tmp)
    for key, value in json.loads(dump.read_text()).items():
        if key.startswith("DRIFTWATCH_"):
            secret = key.removeprefix("DRIFTWATCH_").lower() in SECRET_FIELDS
            assert key in env or secret, f"{key} came from nowhere"
            mp.setenv(key, value)
    return Settings(), mounted  # every variable is a real setting (extra="forbid")


@pytest.mark.parametrize("name", ["worker", "demo"])
def test_secure_client_settings(
    compose: dict,
    secure: dict,
    generated: Path,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, mounted = _client_settings(compose, secure, generated, name, tmp_path, monkeypatch)
    kafka = settings.kafka
    props = _properties(_kafka_env(compose, secure))
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    advertised = _listeners(props, "advertised.listeners")
    (listener,) = [n for n, address in advertised.items() if address == kafka.bootstrap]
    assert protocols[listener] == kafka.security_protocol == "SASL_SSL"
    assert kafka.sasl_mechanism in props["sasl.enabled.mechanisms"].split(",")
    assert kafka.ssl_certfile is not None and props["ssl.client.auth"] == "required"
    assert kafka.ssl_check_hostname  # so the servers' certificates must name the services
    redis_cert = _service(compose, secure, "redis")["command"]
    redis_cert = redis_cert[redis_cert.index("--tls-cert-file") + 1].removeprefix(SECRETS_DIR)
    for secret, host in (("server_keystore", kafka.bootstrap.rsplit(":", 1)[0]),
                         (redis_cert, urlparse(settings.redis.url).hostname)):  # fmt: skip
        names = subprocess.run(
            [OPENSSL, "x509", "-noout", "-ext", "subjectAltName", "-in",
             generated / secure["secrets"][secret]["file"]],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert f"DNS:{host}" in names, (secret, host, names)
    assert ssl_context(kafka) is not None  # CA, certificate and key load
    users = _scram_users(secure)
    password = settings.kafka_sasl_password
    assert password is not None and kafka.sasl_username in users
    expected = (mounted / users[kafka.sasl_username]).read_text().strip()
    assert password.get_secret_value() == expected

    redis = settings.redis
    command = _service(compose, secure, "redis")["command"]
    assert redis.url.startswith("rediss://")
    assert command[command.index("--port") + 1] == "0"  # TLS only
    assert urlparse(redis.url).port == int(command[command.index("--tls-port") + 1])
    assert command[command.index("--tls-auth-clients") + 1] == "yes"
    if name == "worker":
        acl = (generated / secure["secrets"]["redis_users"]["file"]).read_text().splitlines()
        assert "user default off" in acl
        redis_password, key = settings.redis_password, settings.snapshot_key
        assert redis_password is not None and key is not None
        rule = f"user {redis.username} on >{redis_password.get_secret_value()} "
        assert rule + acl_rules(redis.prefix) in acl
        # the secret file wins over docker-compose.yml's default
        assert key.get_secret_value() == (mounted / "snapshot_key").read_text().strip()


def test_secure_broker_is_the_test_broker(
    compose: dict, secure: dict, services_py: Any, tmp_path: Path
) -> None:
    """The broker's configuration matches scripts/services.py's kafka-secure, and its own
    format step renders exactly the properties the image will start with."""
    env = _kafka_env(compose, secure)
    assert not [k for k in IMAGE_DEFAULTS if k not in env], "left to the image's defaults"
    props = _properties(env)
    lines = services_py.KAFKA_SECURE_PROPERTIES.replace("\\\n", "").splitlines()
    theirs = dict(s.split("=", 1) for s in lines if "=" in s and not s.startswith("#"))
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    their_protocols = dict(
        p.split(":") for p in theirs["listener.security.protocol.map"].split(",")
    )
    assert protocols[props["inter.broker.listener.name"]] == "SASL_SSL"
    assert their_protocols[theirs["inter.broker.listener.name"]] == "SASL_SSL"
    assert {protocols[n] for n in _listeners(props, "advertised.listeners")} == {"SASL_SSL"}
    for key in ("sasl.enabled.mechanisms", "sasl.mechanism.inter.broker.protocol",
                "ssl.keystore.type", "ssl.truststore.type", "authorizer.class.name",
                "allow.everyone.if.no.acl.found", "super.users"):  # fmt: skip
        assert props[key] == theirs[key], key
    assert props["ssl.client.auth"] == theirs["listener.name.sasl_ssl.ssl.client.auth"]
    # the controller listener (ANONYMOUS, a super user) is not reachable from outside
    assert _listeners(props, "listeners")["CONTROLLER"].startswith("localhost:")
    assert "SSL://" not in env["KAFKA_ADVERTISED_LISTENERS"]  # see the file's comment
    assert "java.security.auth.login.config=/run/secrets/" in env["KAFKA_OPTS"]
    users = _scram_users(secure)
    assert set(users) <= set(services_py.KAFKA_USERS)

    # the format step, run with the image's tools replaced by recorders
    out, args = tmp_path / "format.properties", tmp_path / "args"
    argv = [_interpolated(a) for a in secure["services"]["kafka"]["command"]]
    scratch = "/tmp/format.properties"  # noqa: S108 - the container's path, replaced here
    argv = [a.replace(scratch, str(out)).replace(SECRETS_DIR, f"{tmp_path}/") for a in argv]
    for user, secret in users.items():
        (tmp_path / secret).write_text(f"pw-{user}\n")
    shims = {
        "/opt/kafka/bin/kafka-storage.sh": f'printf "%s\\n" "$@" > {args}',
        # the image's usual start, after the format (the arguments are recorded by then)
        "/etc/kafka/docker/run": f"test -s {args} && touch {tmp_path / 'started'}",
    }
    # one more variable exercises every rule of the mapping, and a value with "="
    probe = {**env, "KAFKA_ONE__TWO___THREE_FOUR": "a=b"}
    _run(argv, probe, shims, tmp_path)
    assert (tmp_path / "started").exists()
    rendered = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert rendered == {**props, "one_two-three.four": "a=b"} == _properties(probe)
    argv = args.read_text().splitlines()
    assert argv[argv.index("--cluster-id") + 1] == env["CLUSTER_ID"]
    assert argv[argv.index("--config") + 1] == str(out)
    scram = [argv[i + 1] for i, a in enumerate(argv) if a == "--add-scram"]
    assert scram == [f"SCRAM-SHA-512=[name={u},password=pw-{u}]" for u in users]


def test_secure_acls_are_the_required_ones(
    compose: dict, secure: dict, generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = _client_settings(compose, secure, generated, "worker", tmp_path, monkeypatch)
    script = _interpolated(secure["services"]["kafka-acls"]["command"][-1])
    (prelude,) = re.findall(r'^A="(.*)"$', script, re.M)
    assert f"--allow-principal User:{settings.kafka.sasl_username}" in prelude
    assert f"--bootstrap-server {settings.kafka.bootstrap} " in prelude
    granted = set()
    for line in re.findall(r"^\$A (.*)$", script, re.M):
        words = line.split()
        pairs = list(zip(words[::2], words[1::2], strict=True))
        operations = [v for k, v in pairs if k == "--operation"]
        prefixed = ("--resource-pattern-type", "prefixed") in pairs
        for kind, name in pairs:
            if kind in ("--topic", "--group"):
                resource = kind.removeprefix("--")
                granted |= {Acl(resource, name, op, prefixed) for op in operations}
    assert granted == set(required_acls(settings))


def test_secure_override_hard_codes_no_secret(secure: dict) -> None:
    for name, service in secure["services"].items():
        for key, value in service.get("environment", {}).items():
            assert key.removeprefix("DRIFTWATCH_").lower() not in SECRET_FIELDS, (name, key)
            assert not re.search(r"PASSWORD|SECRET|JAAS", key), (name, key)
            assert "password" not in str(value).lower(), (name, key)
    for text in _strings(secure["services"]):
        # a password is only ever read from a secret file
        assert not re.search(r"password=(?!\$\(cat /run/secrets/\w+\))", _interpolated(text))
        assert not re.search(r">\w{8,}", text), "a Redis ACL password in the file"
