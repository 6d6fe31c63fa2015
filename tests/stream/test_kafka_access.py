"""The start-up rights check reads a group's authorized operations from its coordinator; a
coordinator still loading (a restarted broker) is asked again, not read as missing rights."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from stream.service import kafka_access
from stream.service.kafka_access import OPERATIONS, _group_operations
from tests.stream.admin_fakes import CoordinatorAdmin, no_wait

READ_DESCRIBE = (1 << OPERATIONS["Read"]) | (1 << OPERATIONS["Describe"])


class Admin(CoordinatorAdmin):
    """Answers DescribeGroups with each of ``codes`` in turn (then 0), operations as given."""

    def answer(self, code: int) -> Any:
        operations = -2147483648 if code else READ_DESCRIBE  # Kafka's "not given"
        return SimpleNamespace(groups=[(code, "g", "", "", [], operations)])


def test_a_coordinator_loading_its_groups_is_asked_again(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka_access.asyncio, "sleep", no_wait)
    admin = Admin([14, 14, 15, 16])
    assert asyncio.run(_group_operations(admin, "g")) == READ_DESCRIBE  # type: ignore[arg-type]
    assert admin.asked == 5


def test_a_group_the_principal_may_not_see_has_no_operations() -> None:
    assert asyncio.run(_group_operations(Admin([30]), "g")) == 0  # type: ignore[arg-type]
