"""The Kafka rights a worker needs, and the start-up check that its principal has them.

A worker short of an ACL would otherwise join its groups and then fail on every fetch or
send (or, for a group, wait for an assignment that never comes). At start-up the broker is
asked what this principal may do on each topic and group (KIP-430: the authorized
operations of Metadata v8 and DescribeGroups v3), and a missing right stops the worker with
one line naming it. ``required_acls`` is also the list documented in the README.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.admin import DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from stream.service.batches import consumer_group
from stream.service.config import Settings
from stream.service.group_offsets import COORDINATOR_BUSY, RETRY_S
from stream.service.kafka_security import client_options
from stream.service.topics import topic_partitions, train_topic_name

#: Kafka's AclOperation codes (org.apache.kafka.common.acl.AclOperation): bit n of an
#: authorized-operations field is operation n.
OPERATIONS = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8}
Operation = Literal["Read", "Write", "Create", "Describe"]
COORDINATOR_TRIES = 20


@dataclass(frozen=True)
class Acl:
    """One right: ``operation`` on a topic or group, by ``name`` or by name prefix."""

    resource: Literal["topic", "group"]
    name: str
    operation: Operation
    prefixed: bool = False


def worker_groups(settings: Settings) -> list[str]:
    """The consumer groups of a worker: its batch consumers' (as
    :func:`stream.service.batches.consumer_group` assigns them) and Faust's own
    (``app_id``: the app joins it although it runs no agent).

    >>> worker_groups(Settings(worker={"app_id": "dw"}))
    ['dw', 'dw-ingest', 'dw-learn', 'dw-monitor']
    """
    t = settings.topics
    topics = (t.events, t.labels, train_topic_name(settings), t.monitor)
    return sorted({settings.worker.app_id, *(consumer_group(settings, topic) for topic in topics)})


def required_acls(settings: Settings) -> list[Acl]:
    """Every ACL a worker needs, least privilege.

    Create on every topic: the worker creates the missing ones at start-up and Faust
    declares its topics at every start. The ``{app_id}-`` prefix covers the training topic
    and Faust's internal ones (``{app_id}-__assignor-__leader``).

    >>> [f"{a.operation} {a.resource} {a.name}" for a in required_acls(Settings())][:3]
    ['Create topic events', 'Describe topic events', 'Read topic events']
    """
    t, app_id = settings.topics, settings.worker.app_id
    wanted: list[tuple[str, tuple[Operation, ...]]] = [
        (t.events, ("Read",)),
        (t.labels, ("Read",)),
        (t.predictions, ("Write",)),
        (t.alerts, ("Write",)),
        (t.dlq, ("Write",)),
        (t.monitor, ("Read", "Write")),
    ]
    if settings.challenged:
        wanted.append((t.shadow, ("Write",)))
    acls = [Acl("topic", name, op) for name, ops in wanted for op in ("Create", "Describe", *ops)]
    acls += [Acl("topic", f"{app_id}-", op, prefixed=True)
             for op in ("Create", "Describe", "Read", "Write")]  # fmt: skip
    acls += [Acl("group", group, "Read") for group in worker_groups(settings)]
    return acls


def missing(required: list[Acl], authorized: dict[tuple[str, str], int]) -> list[Acl]:
    """The rights of ``required`` that the authorized-operations bit fields lack.

    A prefixed ACL is checked on each authorized name it covers.

    >>> need = [Acl("topic", "a", "Read"), Acl("topic", "a", "Write")]
    >>> missing(need, {("topic", "a"): 1 << 3})
    [Acl(resource='topic', name='a', operation='Write', prefixed=False)]
    """
    gaps = []
    for acl in required:
        names = [
            n
            for (kind, n) in authorized
            if kind == acl.resource and (n.startswith(acl.name) if acl.prefixed else n == acl.name)
        ]
        bit = 1 << OPERATIONS[acl.operation]
        if any(not authorized[(acl.resource, n)] & bit for n in names):
            gaps.append(acl)
    return gaps


async def check_access(settings: Settings) -> None:
    """Raise naming the first rights the worker's principal lacks on its topics and groups."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        authorized = await _topic_operations(admin, list(topic_partitions(settings)))
        for group in worker_groups(settings):
            authorized[("group", group)] = await _group_operations(admin, group)
    finally:
        await admin.close()
    gaps = missing(required_acls(settings), authorized)
    if gaps:
        who = settings.kafka.sasl_username or "this client"
        error = (
            TopicAuthorizationFailedError
            if gaps[0].resource == "topic"
            else (GroupAuthorizationFailedError)
        )
        raise error(f"principal {who} lacks ACLs: {describe(gaps)} (README: Least privilege)")


def describe(acls: list[Acl]) -> str:
    """The ACLs grouped by resource, in one line.

    >>> describe([Acl("topic", "a", "Read"), Acl("topic", "a", "Write"), Acl("group", "g", "Read")])
    "Read, Write on topic 'a'; Read on group 'g'"
    """
    by_resource: dict[str, list[str]] = {}
    for a in acls:
        where = f"{a.resource} {'prefix ' if a.prefixed else ''}{a.name!r}"
        by_resource.setdefault(where, []).append(a.operation)
    return "; ".join(f"{', '.join(ops)} on {where}" for where, ops in by_resource.items())


async def _topic_operations(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> dict[tuple[str, str], int]:
    response = await admin._send_request(_MetadataRequest(topics))  # noqa: SLF001
    found: dict[tuple[str, str], int] = {}
    for error_code, name, _internal, _parts, operations in response.topics:
        # 29 TOPIC_AUTHORIZATION_FAILED: not even Describe, so no operations at all
        found[("topic", name)] = 0 if error_code == 29 else operations
    return found


async def _group_operations(admin: AIOKafkaAdminClient, group: str) -> int:
    """The authorized-operations bit field of ``group``; asks again while its coordinator
    is not ready (the start-up check's timeout bounds the wait)."""
    attempt = 0
    while True:
        try:
            coordinator = await admin.find_coordinator(group)
        except GroupAuthorizationFailedError:  # no Describe (nor Read) on the group
            return 0
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            # a fresh cluster creates __consumer_offsets on the first FindCoordinator
            attempt += 1
            if attempt == COORDINATOR_TRIES:
                raise
            await asyncio.sleep(RETRY_S)
            continue
        response = await admin._send_request(_DescribeGroupsRequest(group), coordinator)  # noqa: SLF001
        answer = [(code, ops) for code, name, *_, ops in response.groups if name == group]
        if not answer:
            return 0
        error_code, operations = answer[0]
        # a coordinator that cannot answer yet (a restarted broker loading its groups) gives
        # an empty operations field: asked again, never read as missing rights
        if error_code not in COORDINATOR_BUSY:
            return 0 if error_code == 30 else int(operations)  # 30: GROUP_AUTHORIZATION_FAILED
        await asyncio.sleep(RETRY_S)


class _DescribeGroupsRequest_v3(RequestStruct):
    # aiokafka 0.14's own v3 decodes the answer as v2, dropping the authorized operations
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _DescribeGroupsRequest(Request[_DescribeGroupsRequest_v3]):
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self._group = group

    def build(
        self, request_struct_class: type[_DescribeGroupsRequest_v3]
    ) -> _DescribeGroupsRequest_v3:
        return request_struct_class([self._group], True)


class _MetadataResponse_v8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32),
                          ("rack", String("utf-8")))),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        ("topics", Array(
            ("error_code", Int16), ("topic", String("utf-8")), ("is_internal", Boolean),
            ("partitions", Array(("error_code", Int16), ("partition", Int32), ("leader", Int32),
                                 ("leader_epoch", Int32), ("replicas", Array(Int32)),
                                 ("isr", Array(Int32)), ("offline_replicas", Array(Int32)))),
            ("topic_authorized_operations", Int32))),
        ("cluster_authorized_operations", Int32),
    )  # fmt: skip


class _MetadataRequest_v8(RequestStruct):
    # aiokafka stops at v5; v8 (KIP-430) adds the authorized operations
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _MetadataRequest(Request[_MetadataRequest_v8]):
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequest_v8]) -> _MetadataRequest_v8:
        return request_struct_class(self._topics, False, False, True)
