"""Every etcd key and prefix northpole uses, in one place.

All keys live under one root (``coord.prefix``, default ``/northpole``)::

    {root}/services/{service}/{instance_id}      JSON instance record, on the instance's lease
    {root}/idgen/{region}/workshops/{id}         holder of a workshop id, on the holder's lease
    {root}/elections/{name}/{lease_id:016x}      one candidate, on the candidate's lease

Keys are ASCII; service names, instance ids, regions and election names are
checked by :func:`check_segment` so a name can never reach into another prefix.
"""

from __future__ import annotations

import re

from northpole.core.errors import InvalidInput

DEFAULT_ROOT = "/northpole"

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_segment(value: str, *, field: str) -> str:
    """Return ``value`` if it can be one path segment of a key.

    Raises:
        InvalidInput: Empty, too long, or with characters other than letters,
            digits, ``.``, ``_`` and ``-`` (which keeps ``/`` out).
    """
    if not _SEGMENT.match(value):
        raise InvalidInput(
            "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field=field,
        )
    return value


def check_root(root: str) -> str:
    """Return ``root`` without a trailing slash if it is an absolute key prefix.

    Raises:
        InvalidInput: It does not start with ``/`` or has an empty or bad segment.
    """
    if not root.startswith("/"):
        raise InvalidInput("must start with '/'", field="prefix")
    stripped = root.rstrip("/")
    for segment in stripped.split("/")[1:]:
        check_segment(segment, field="prefix")
    return stripped


def prefix_end(prefix: bytes) -> bytes:
    """Return the ``range_end`` that makes a range cover every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def services_prefix(root: str) -> bytes:
    """Return the prefix of every service instance."""
    return f"{root}/services/".encode()


def service_prefix(root: str, service: str) -> bytes:
    """Return the prefix of the instances of ``service``."""
    return f"{root}/services/{service}/".encode()


def instance_key(root: str, service: str, instance_id: str) -> bytes:
    """Return the key of one service instance."""
    return f"{root}/services/{service}/{instance_id}".encode()


def split_instance_key(root: str, key: bytes) -> tuple[str, str] | None:
    """Return ``(service, instance_id)`` of an instance key, or ``None`` for another key."""
    head = services_prefix(root)
    if not key.startswith(head):
        return None
    parts = key[len(head) :].decode(errors="replace").split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def workshops_prefix(root: str, region: str) -> bytes:
    """Return the prefix of the workshop ids of one region."""
    return f"{root}/idgen/{region}/workshops/".encode()


def workshop_key(root: str, region: str, workshop_id: int) -> bytes:
    """Return the key that holds one workshop id."""
    return workshops_prefix(root, region) + str(workshop_id).encode()


def election_prefix(root: str, name: str) -> bytes:
    """Return the prefix under which the candidates of election ``name`` queue."""
    return f"{root}/elections/{name}/".encode()


def candidate_key(root: str, name: str, lease_id: int) -> bytes:
    """Return a candidate's key: the election prefix and its lease id in hex, as etcd's own."""
    return election_prefix(root, name) + f"{lease_id:016x}".encode()
