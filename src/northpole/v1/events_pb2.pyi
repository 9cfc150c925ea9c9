import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GiftStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GIFT_STATUS_UNSPECIFIED: _ClassVar[GiftStatus]
    GIFT_STATUS_REQUESTED: _ClassVar[GiftStatus]
    GIFT_STATUS_IN_PRODUCTION: _ClassVar[GiftStatus]
    GIFT_STATUS_WRAPPED: _ClassVar[GiftStatus]
    GIFT_STATUS_LOADED: _ClassVar[GiftStatus]
    GIFT_STATUS_DELIVERED: _ClassVar[GiftStatus]
    GIFT_STATUS_FAILED: _ClassVar[GiftStatus]
GIFT_STATUS_UNSPECIFIED: GiftStatus
GIFT_STATUS_REQUESTED: GiftStatus
GIFT_STATUS_IN_PRODUCTION: GiftStatus
GIFT_STATUS_WRAPPED: GiftStatus
GIFT_STATUS_LOADED: GiftStatus
GIFT_STATUS_DELIVERED: GiftStatus
GIFT_STATUS_FAILED: GiftStatus

class GiftCreated(_message.Message):
    __slots__ = ("gift_id", "workshop_id", "gift_type", "recipient_id", "status", "created_at")
    GIFT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKSHOP_ID_FIELD_NUMBER: _ClassVar[int]
    GIFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    gift_id: str
    workshop_id: int
    gift_type: str
    recipient_id: str
    status: GiftStatus
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, gift_id: _Optional[str] = ..., workshop_id: _Optional[int] = ..., gift_type: _Optional[str] = ..., recipient_id: _Optional[str] = ..., status: _Optional[_Union[GiftStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GiftStatusChanged(_message.Message):
    __slots__ = ("gift_id", "old_status", "new_status", "at", "cause")
    GIFT_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEW_STATUS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    gift_id: str
    old_status: GiftStatus
    new_status: GiftStatus
    at: _timestamp_pb2.Timestamp
    cause: str
    def __init__(self, gift_id: _Optional[str] = ..., old_status: _Optional[_Union[GiftStatus, str]] = ..., new_status: _Optional[_Union[GiftStatus, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cause: _Optional[str] = ...) -> None: ...

class ExchangeCommitted(_message.Message):
    __slots__ = ("exchange_id", "year", "participants", "at")
    EXCHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    exchange_id: str
    year: int
    participants: int
    at: _timestamp_pb2.Timestamp
    def __init__(self, exchange_id: _Optional[str] = ..., year: _Optional[int] = ..., participants: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
