"""docs/contracts.md agrees with the message models of stream/messages.py and the topic names.

Every pydantic model and dataclass defined in ``stream.messages`` (public ones) must have a
section in docs/contracts.md, headed by its name, whose field table lists the model's fields
in the model's order, each with its annotation as written in the source (the module uses
``from __future__ import annotations``, so ``__annotations__`` holds those strings). A field
added to a model without documenting it fails here. No I/O besides reading the document.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

import stream.messages as messages
from stream.service.config import TopicSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "contracts.md"
FIELD_HEADER = ["field", "type", "required", "meaning"]


def _message_models() -> dict[str, type]:
    """Public pydantic models and dataclasses defined in stream.messages."""
    found = {}
    for name, obj in vars(messages).items():
        if not inspect.isclass(obj) or obj.__module__ != messages.__name__:
            continue
        if name.startswith("_"):
            continue
        if dataclasses.is_dataclass(obj) or issubclass(obj, BaseModel):
            found[name] = obj
    return found


MODELS = _message_models()


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row: split on unescaped pipes, ``\\|`` unescaped."""
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|").strip("`").strip() for p in parts]


def _tables_by_heading(text: str) -> list[tuple[str, list[list[str]]]]:
    """(heading text, table rows) for every table; the first row is the header."""
    tables: list[tuple[str, list[list[str]]]] = []
    heading = ""
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = _cells(line)
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):  # skip the separator row
                rows.append(cells)
            continue
        if rows:
            tables.append((heading, rows))
            rows = []
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            heading = match.group(1).replace("`", "").strip()
    return tables


TABLES = _tables_by_heading(DOC.read_text(encoding="utf-8"))


def _field_tables() -> dict[str, list[list[str]]]:
    """Field tables by the model their heading names (its first word)."""
    found: dict[str, list[list[str]]] = {}
    for heading, rows in TABLES:
        if [c.lower() for c in rows[0]] != FIELD_HEADER:
            continue
        name = heading.split()[0] if heading else ""
        assert name not in found, f"two field tables for {name!r}"
        found[name] = rows[1:]
    return found


FIELD_TABLES = _field_tables()


def _fields(model: type) -> list[str]:
    if dataclasses.is_dataclass(model):
        return [f.name for f in dataclasses.fields(model)]
    return list(model.model_fields)


def _has_default(model: type, name: str) -> bool:
    if dataclasses.is_dataclass(model):
        field = next(f for f in dataclasses.fields(model) if f.name == name)
        return not (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
    return not model.model_fields[name].is_required()


def _annotation(model: type, name: str) -> str:
    """The annotation of ``name`` as written in the source (the nearest class declaring it)."""
    for cls in model.__mro__:
        annotations = vars(cls).get("__annotations__", {})
        if name in annotations:
            annotation = annotations[name]
            assert isinstance(annotation, str), f"{model.__name__}.{name}: not a string"
            return annotation
    raise AssertionError(f"{model.__name__}.{name} has no annotation")


def _normal(type_text: str) -> str:
    return re.sub(r"\s+", "", type_text)


def test_the_message_models_are_found() -> None:
    expected = {"Event", "Label", "Prediction", "Alert", "Window", "DeadLetter"}
    assert expected <= set(MODELS), sorted(MODELS)


def test_every_field_table_names_a_message_model() -> None:
    assert set(FIELD_TABLES) == set(MODELS), (
        f"undocumented models: {sorted(set(MODELS) - set(FIELD_TABLES))}, "
        f"tables of no model: {sorted(set(FIELD_TABLES) - set(MODELS))}"
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_field_table_matches_the_model(name: str) -> None:
    model = MODELS[name]
    rows = FIELD_TABLES.get(name)
    assert rows is not None, f"docs/contracts.md has no field table for {name}"
    assert all(len(row) == len(FIELD_HEADER) for row in rows), rows
    assert [row[0] for row in rows] == _fields(model)
    for field, type_text, required, meaning in rows:
        source = _annotation(model, field)
        assert _normal(type_text) == _normal(source), (
            f"{name}.{field}: documented {type_text!r}, annotated {source!r}"
        )
        assert required in ("yes", "no"), f"{name}.{field}: required is {required!r}"
        if required == "no":
            assert _has_default(model, field), f"{name}.{field} is required by the model"
        assert meaning, f"{name}.{field} has no meaning"


def test_topics_table_lists_every_default_topic() -> None:
    tables = [rows for heading, rows in TABLES if heading == "Topics"]
    assert len(tables) == 1, "docs/contracts.md needs one table under '## Topics'"
    header, *rows = tables[0]
    columns = {c.lower(): i for i, c in enumerate(header)}
    for column in ("setting", "default", "direction", "key", "value", "partitions"):
        assert column in columns, f"topics table lacks the {column!r} column"
    defaults = {
        name: field.default
        for name, field in TopicSettings.model_fields.items()
        if field.annotation in (str, "str")
    }
    assert {"events", "labels", "predictions", "alerts", "dlq", "monitor"} <= set(defaults)
    by_default = {}
    for row in rows:
        for token in re.findall(r"[^\s(),`]+", row[columns["default"]]):
            by_default[token] = row
    for name, default in defaults.items():
        assert default in by_default, f"default topic {default!r} missing from the topics table"
        assert f"topics.{name}" in by_default[default][columns["setting"]]
    assert by_default["driftwatch.monitor"][columns["direction"]] == "internal"
    train = by_default["{app_id}-train-{model}"]
    assert train[columns["direction"]] == "internal"
    assert train[columns["partitions"]] == "1"
