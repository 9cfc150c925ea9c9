import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateGiftIdsRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GenerateGiftIdsResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DecodeGiftIdRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class DecodedGiftId(_message.Message):
    __slots__ = ("id", "timestamp", "unix_ms", "workshop_id", "sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    WORKSHOP_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    timestamp: _timestamp_pb2.Timestamp
    unix_ms: int
    workshop_id: int
    sequence: int
    def __init__(self, id: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unix_ms: _Optional[int] = ..., workshop_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class GiftIdHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GiftIdHealth(_message.Message):
    __slots__ = ("status", "workshop_id", "assigned_by", "epoch_ms", "clock_behind_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WORKSHOP_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_BEHIND_MS_FIELD_NUMBER: _ClassVar[int]
    status: str
    workshop_id: int
    assigned_by: str
    epoch_ms: int
    clock_behind_ms: int
    def __init__(self, status: _Optional[str] = ..., workshop_id: _Optional[int] = ..., assigned_by: _Optional[str] = ..., epoch_ms: _Optional[int] = ..., clock_behind_ms: _Optional[int] = ...) -> None: ...
