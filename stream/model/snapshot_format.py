"""The bytes of a model snapshot: an HMAC-signed header and the pickled model.

A record is metadata (JSON) plus the pickled River pipeline, signed together with HMAC-SHA256
under the key from ``DRIFTWATCH_SNAPSHOT_KEY``. A record is verified before anything in it is
used, and unpickled only after its signature checks out: unpickling runs code, so an unsigned
or tampered record must never reach ``pickle.loads``. Pure, no Redis: :mod:`stream.model.snapshots`
stores the records.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stream.exceptions import SnapshotIntegrityError
from stream.model.online import OnlineModel

Kind = Literal["version", "checkpoint"]
FORMAT = 1
# Domain separation: these signatures can never be mistaken for another HMAC use of the key.
_DOMAIN = b"driftwatch-snapshot\x00"
NO_KEY = "no snapshot key is configured: set DRIFTWATCH_SNAPSHOT_KEY"


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """The metadata of a snapshot record.

    ``meta`` is what the caller passed to ``publish``/``save_checkpoint`` (e.g. the offset
    of the last learned example). ``valid`` is False for a record whose signature fails; its
    other fields then come from unverified bytes and are shown only for diagnosis.
    """

    name: str
    version: int
    task: str
    pipeline: str
    n_learned: int
    created_at: int
    meta: Mapping[str, Any] = field(default_factory=dict)
    valid: bool = True


def sign(payload: bytes, key: bytes) -> str:
    """The HMAC-SHA256 of ``payload`` under ``key``, as hex.

    Raises
    ------
    SnapshotIntegrityError
        If ``key`` is empty: nothing may be signed without a configured key.

    Examples
    --------
    >>> sign(b"payload", b"secret")[:16]
    'b82fcb791acec578'
    """
    if not key:
        raise SnapshotIntegrityError(f"cannot sign a snapshot: {NO_KEY}")
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, signature: str | bytes | None, key: bytes) -> bool:
    """Whether ``signature`` is the HMAC of ``payload`` under ``key`` (constant-time compare).

    A missing signature or an empty key never verifies.

    Examples
    --------
    >>> sig = sign(b"payload", b"secret")
    >>> verify(b"payload", sig, b"secret"), verify(b"payloaD", sig, b"secret")
    (True, False)
    >>> verify(b"payload", sig, b"other"), verify(b"payload", None, b"secret")
    (False, False)
    """
    if not key or not signature:
        return False
    if isinstance(signature, str):
        try:
            signature = signature.encode("ascii")
        except UnicodeEncodeError:
            return False
    expected = sign(payload, key).encode("ascii")
    return hmac.compare_digest(expected, signature)


def _signed_bytes(meta: bytes, blob: bytes) -> bytes:
    # length-prefixed so that no byte can move between metadata and model unnoticed
    return _DOMAIN + len(meta).to_bytes(8, "big") + meta + blob


def encode_record(
    model: OnlineModel,
    meta: Mapping[str, Any] | None,
    key: bytes,
    *,
    kind: Kind,
    version: int,
    created_at: int,
) -> dict[str, bytes]:
    """The Redis hash fields of a signed snapshot: ``meta``, ``model`` and ``sig``.

    Parameters
    ----------
    model
        The model to store; its estimator is pickled, its identity goes into the metadata.
    meta
        JSON-serialisable caller information, e.g. ``{"offset": 812}``.
    key
        The HMAC key.
    kind
        ``"version"`` for a published version, ``"checkpoint"`` for the trainer's state.
    version
        The version number recorded in the metadata.
    created_at
        Epoch milliseconds.

    Examples
    --------
    >>> from stream.service.config import ModelSettings
    >>> from stream.model.online import create_model
    >>> m = create_model(ModelSettings(name="fraud"), [])
    >>> rec = encode_record(m, {"offset": 3}, b"k", kind="version", version=1, created_at=0)
    >>> sorted(rec), rec["meta"][:40]
    (['meta', 'model', 'sig'], b'{"created_at":0,"format":1,"kind":"versi')
    """
    header = {
        "format": FORMAT,
        "kind": kind,
        "name": model.name,
        "version": version,
        "task": model.task,
        "pipeline": model.pipeline,
        "n_learned": model.n_learned,
        "created_at": created_at,
        "meta": dict(meta or {}),
    }
    meta_bytes = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    blob = pickle.dumps(model.estimator, protocol=pickle.HIGHEST_PROTOCOL)
    sig = sign(_signed_bytes(meta_bytes, blob), key)
    return {"meta": meta_bytes, "model": blob, "sig": sig.encode("ascii")}


def read_info(
    fields: Mapping[bytes, bytes], key: bytes, *, name: str, kind: Kind, version: int | None
) -> SnapshotInfo:
    """Verify a record and return its metadata; the model bytes are not unpickled.

    ``name``, ``kind`` and ``version`` (None: any) are what the record's location says it
    is; a validly signed record copied to another location is refused as well.

    Raises
    ------
    SnapshotIntegrityError
        No key configured, a field or the signature missing, or the signature wrong.

    Examples
    --------
    >>> from stream.service.config import ModelSettings
    >>> from stream.model.online import create_model
    >>> m = create_model(ModelSettings(name="fraud"), [])
    >>> rec = encode_record(m, {"offset": 3}, b"k", kind="version", version=1, created_at=0)
    >>> fields = {k.encode(): v for k, v in rec.items()}
    >>> read_info(fields, b"k", name="fraud", kind="version", version=1).meta
    {'offset': 3}
    >>> read_info(fields, b"wrong", name="fraud", kind="version", version=1)
    Traceback (most recent call last):
    ...
    stream.exceptions.SnapshotIntegrityError: snapshot version 1 of model 'fraud' failed its \
HMAC check (tampered, or signed with another key): refusing to load it
    """
    where = f"snapshot {kind}{'' if version is None else f' {version}'} of model {name!r}"
    if not key:
        raise SnapshotIntegrityError(f"refusing to load {where}: {NO_KEY}")
    meta, blob, sig = (fields.get(f) for f in (b"meta", b"model", b"sig"))
    if meta is None or blob is None:
        raise SnapshotIntegrityError(f"{where} is incomplete (no meta or model field)")
    if not sig:
        raise SnapshotIntegrityError(f"{where} has no signature: refusing to load it")
    if not verify(_signed_bytes(meta, blob), sig, key):
        raise SnapshotIntegrityError(
            f"{where} failed its HMAC check (tampered, or signed with another key): "
            "refusing to load it"
        )
    return _checked_info(orjson.loads(meta), where, name=name, kind=kind, version=version)


def _checked_info(
    header: dict[str, Any], where: str, *, name: str, kind: Kind, version: int | None
) -> SnapshotInfo:
    claimed = (header.get("name"), header.get("kind"), header.get("version"))
    if claimed[:2] != (name, kind) or version not in (None, claimed[2]):
        raise SnapshotIntegrityError(
            f"{where} is signed but its metadata says name/kind/version = {claimed}: "
            "a record moved from another key; refusing to load it"
        )
    return _info(header, valid=True)


def _info(header: Mapping[str, Any], *, valid: bool) -> SnapshotInfo:
    return SnapshotInfo(
        name=str(header.get("name", "")),
        version=int(header.get("version", 0)),
        task=str(header.get("task", "")),
        pipeline=str(header.get("pipeline", "")),
        n_learned=int(header.get("n_learned", 0)),
        created_at=int(header.get("created_at", 0)),
        meta=dict(header.get("meta") or {}),
        valid=valid,
    )


def decode_record(
    fields: Mapping[bytes, bytes], key: bytes, *, name: str, kind: Kind, version: int | None
) -> tuple[OnlineModel, SnapshotInfo]:
    """Verify a record with :func:`read_info`, then (and only then) unpickle its model.

    Examples
    --------
    >>> from stream.service.config import ModelSettings
    >>> from stream.model.online import create_model
    >>> m = create_model(ModelSettings(name="fraud"), [])
    >>> m.learn({"amount": 3.0}, 1)
    >>> rec = encode_record(m, None, b"k", kind="version", version=4, created_at=0)
    >>> fields = {k.encode(): v for k, v in rec.items()}
    >>> loaded, info = decode_record(fields, b"k", name="fraud", kind="version", version=4)
    >>> x = {"amount": 3.0}
    >>> loaded.version, loaded.n_learned, loaded.predict(x) == m.predict(x)
    (4, 1, True)
    """
    info = read_info(fields, key, name=name, kind=kind, version=version)
    # S301: safe only because read_info verified the HMAC over exactly these bytes above
    estimator = pickle.loads(fields[b"model"])  # noqa: S301
    model = OnlineModel(
        name=info.name,
        task=info.task,  # type: ignore[arg-type]  # signed metadata written by encode_record
        pipeline=info.pipeline,
        estimator=estimator,
        version=info.version,
        n_learned=info.n_learned,
    )
    return model, info


def unverified_info(fields: Mapping[bytes, bytes], version: int) -> SnapshotInfo:
    # for listing a record that failed its check: parse what is there, trust nothing
    try:
        header = orjson.loads(fields.get(b"meta") or b"{}")
        return _info({**header, "version": version}, valid=False)
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return _info({"name": "?", "version": version, "task": "?", "pipeline": "?"}, valid=False)
