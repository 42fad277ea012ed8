"""Stored customer states: a versioned header, then zlib of the record.

A stored record carries its format version (:func:`encode_state`); records
of an older version are migrated by field name (:func:`decode_state`), never
restored by position.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import numpy.typing as npt

from churnwatch.pipeline import state as layout  # its format version and dtypes, read at each call
from churnwatch.pipeline.state import CustomerState, StateBlock, stored_payload

_HEADER = struct.Struct("<2sBH")  # magic, format version, partition
_MAGIC = b"CS"


def encode_state(state: CustomerState, partition: int = 0) -> bytes:
    """The customer's state as stored bytes: a versioned header, then zlib of
    the fixed-size record and a small JSON of the named Python values."""
    header = _HEADER.pack(_MAGIC, layout.FORMAT_VERSION, partition)
    return header + zlib.compress(stored_payload(state), 1)


class StateFormatError(ValueError):
    """A stored state that this release cannot read (the message says why)."""


def stored_partition(data: bytes) -> int:
    """The partition a stored state was written for, from its header alone."""
    if len(data) < _HEADER.size or data[:2] != _MAGIC:
        raise StateFormatError("not a churnwatch customer state (no header)")
    return int(_HEADER.unpack_from(data)[2])


def decode_state(data: bytes, block: StateBlock) -> tuple[CustomerState, int]:
    """Load stored bytes into ``block``; returns the state and its partition.

    A record of an older format version is migrated field by field, by name:
    fields that are new get their empty value, fields that moved keep theirs.
    """
    partition = stored_partition(data)
    version = data[2]
    dtype = layout.STATE_DTYPES.get(version)
    if dtype is None:
        raise StateFormatError(
            f"customer state format {version} is newer than this release reads "
            f"(up to {layout.FORMAT_VERSION}): upgrade churnwatch"
        )
    try:
        payload = zlib.decompress(data[_HEADER.size :])
    except zlib.error as exc:
        raise StateFormatError(f"corrupt customer state: {exc}") from exc
    record = np.frombuffer(payload[: dtype.itemsize], dtype)
    extras = json.loads(payload[dtype.itemsize :])
    state = block.state(extras["customer_id"])
    target = block.data[state.row : state.row + 1]
    if dtype == layout.STATE_DTYPE:
        target[:] = record
    else:
        _migrate(record, target)
    state.name = extras["name"]
    state.owner = extras["owner"]
    state.segment = extras["segment"]
    state.region = extras["region"]
    state.open_invoices = extras["open_invoices"]
    state.open_complaints = extras["open_complaints"]
    return state, partition


def _migrate(record: npt.NDArray[np.void], target: npt.NDArray[np.void]) -> None:
    """Copy an older record's fields into ``target`` by name (new fields stay empty)."""
    names = set(target.dtype.names or ())
    for name in record.dtype.names or ():
        if name not in names:
            continue
        if record.dtype[name].shape != target.dtype[name].shape:
            raise StateFormatError(
                f"customer state field {name!r} changed shape "
                f"{record.dtype[name].shape} -> {target.dtype[name].shape}: needs a migration"
            )
        target[name] = record[name]
