from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("agent_version", "tokenizer_digest", "num_train_tokens")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    tokenizer_digest: str
    num_train_tokens: int
    def __init__(self, agent_version: _Optional[str] = ..., tokenizer_digest: _Optional[str] = ..., num_train_tokens: _Optional[int] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("silo_id", "federation_spec_json", "heartbeat_interval_s")
    SILO_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    silo_id: str
    federation_spec_json: bytes
    heartbeat_interval_s: float
    def __init__(self, silo_id: _Optional[str] = ..., federation_spec_json: _Optional[bytes] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("round", "step", "loss", "phase")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round: int
    step: int
    loss: float
    phase: str
    def __init__(self, round: _Optional[int] = ..., step: _Optional[int] = ..., loss: _Optional[float] = ..., phase: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("open_round",)
    OPEN_ROUND_FIELD_NUMBER: _ClassVar[int]
    open_round: int
    def __init__(self, open_round: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("held_version",)
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    held_version: int
    def __init__(self, held_version: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "round", "base_version", "local_steps", "global_step", "deadline_s", "retry_after_s", "message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        EVAL: _ClassVar[Task.Kind]
        WAIT: _ClassVar[Task.Kind]
        DONE: _ClassVar[Task.Kind]
    KIND_UNSPECIFIED: Task.Kind
    TRAIN: Task.Kind
    EVAL: Task.Kind
    WAIT: Task.Kind
    DONE: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    round: int
    base_version: int
    local_steps: int
    global_step: int
    deadline_s: float
    retry_after_s: float
    message: str
    def __init__(self, kind: _Optional[_Union[Task.Kind, str]] = ..., round: _Optional[int] = ..., base_version: _Optional[int] = ..., local_steps: _Optional[int] = ..., global_step: _Optional[int] = ..., deadline_s: _Optional[float] = ..., retry_after_s: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("version", "offset", "have_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    offset: int
    have_version: int
    def __init__(self, version: _Optional[int] = ..., offset: _Optional[int] = ..., have_version: _Optional[int] = ...) -> None: ...

class ObjectHeader(_message.Message):
    __slots__ = ("digest", "size", "encoding", "version", "base_version")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    encoding: str
    version: int
    base_version: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., encoding: _Optional[str] = ..., version: _Optional[int] = ..., base_version: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data", "crc32")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    crc32: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ObjectHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[ObjectHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("transfer_id", "round", "base_version", "digest", "size", "offset", "num_tokens", "train_loss", "base_eval_loss", "signature", "train_seconds", "codec")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    BASE_EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    round: int
    base_version: int
    digest: str
    size: int
    offset: int
    num_tokens: int
    train_loss: float
    base_eval_loss: float
    signature: bytes
    train_seconds: float
    codec: str
    def __init__(self, transfer_id: _Optional[str] = ..., round: _Optional[int] = ..., base_version: _Optional[int] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., num_tokens: _Optional[int] = ..., train_loss: _Optional[float] = ..., base_eval_loss: _Optional[float] = ..., signature: _Optional[bytes] = ..., train_seconds: _Optional[float] = ..., codec: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("status", "committed_offset", "message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[UploadReply.Status]
        ACCEPTED: _ClassVar[UploadReply.Status]
        INCOMPLETE: _ClassVar[UploadReply.Status]
    STATUS_UNSPECIFIED: UploadReply.Status
    ACCEPTED: UploadReply.Status
    INCOMPLETE: UploadReply.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: UploadReply.Status
    committed_offset: int
    message: str
    def __init__(self, status: _Optional[_Union[UploadReply.Status, str]] = ..., committed_offset: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class UploadStatusRequest(_message.Message):
    __slots__ = ("transfer_id",)
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    def __init__(self, transfer_id: _Optional[str] = ...) -> None: ...

class UploadStatusReply(_message.Message):
    __slots__ = ("committed_offset", "complete", "accepted")
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    committed_offset: int
    complete: bool
    accepted: bool
    def __init__(self, committed_offset: _Optional[int] = ..., complete: _Optional[bool] = ..., accepted: _Optional[bool] = ...) -> None: ...

class EvalReport(_message.Message):
    __slots__ = ("version", "loss", "tokens")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    version: int
    loss: float
    tokens: int
    def __init__(self, version: _Optional[int] = ..., loss: _Optional[float] = ..., tokens: _Optional[int] = ...) -> None: ...

class EvalAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: bytes
    def __init__(self, status_json: _Optional[bytes] = ...) -> None: ...
