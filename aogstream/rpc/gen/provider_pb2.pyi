from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetManifestRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetManifestResponse(_message.Message):
    __slots__ = ("code", "message", "manifest_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    manifest_json: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., manifest_json: _Optional[bytes] = ...) -> None: ...

class InvokeServiceRequest(_message.Message):
    __slots__ = ("service_name", "request_data", "auth_info")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DATA_FIELD_NUMBER: _ClassVar[int]
    AUTH_INFO_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    request_data: bytes
    auth_info: str
    def __init__(self, service_name: _Optional[str] = ..., request_data: _Optional[bytes] = ..., auth_info: _Optional[str] = ...) -> None: ...

class InvokeServiceResponse(_message.Message):
    __slots__ = ("code", "message", "response_data")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_DATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response_data: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response_data: _Optional[bytes] = ...) -> None: ...

class SetAuthRequest(_message.Message):
    __slots__ = ("auth_type", "credentials")
    class CredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AUTH_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    auth_type: str
    credentials: _containers.ScalarMap[str, str]
    def __init__(self, auth_type: _Optional[str] = ..., credentials: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetAuthResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ValidateAuthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ValidateAuthResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class RefreshAuthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RefreshAuthResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StartEngineRequest(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    def __init__(self, mode: _Optional[str] = ...) -> None: ...

class StartEngineResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StopEngineRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopEngineResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class HealthCheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthCheckResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("code", "message", "config_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    config_json: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., config_json: _Optional[bytes] = ...) -> None: ...

class CheckEngineRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckEngineResponse(_message.Message):
    __slots__ = ("code", "message", "installed")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    installed: bool
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., installed: _Optional[bool] = ...) -> None: ...

class InstallEngineRequest(_message.Message):
    __slots__ = ("cover",)
    COVER_FIELD_NUMBER: _ClassVar[int]
    cover: bool
    def __init__(self, cover: _Optional[bool] = ...) -> None: ...

class InstallEngineResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InitEnvRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InitEnvResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class UpgradeEngineRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpgradeEngineResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: bytes
    def __init__(self, request_json: _Optional[bytes] = ...) -> None: ...

class PullModelResponse(_message.Message):
    __slots__ = ("code", "message", "response_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response_json: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response_json: _Optional[bytes] = ...) -> None: ...

class PullModelStreamRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: bytes
    def __init__(self, request_json: _Optional[bytes] = ...) -> None: ...

class PullModelStreamResponse(_message.Message):
    __slots__ = ("code", "message", "data")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    data: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: bytes
    def __init__(self, request_json: _Optional[bytes] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("code", "message", "response_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response_json: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response_json: _Optional[bytes] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: bytes
    def __init__(self, request_json: _Optional[bytes] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: bytes
    def __init__(self, request_json: _Optional[bytes] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetRunningModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRunningModelsResponse(_message.Message):
    __slots__ = ("code", "message", "response_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response_json: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response_json: _Optional[bytes] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: bytes
    def __init__(self, request_json: _Optional[bytes] = ...) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("code", "message", "response_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response_json: bytes
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response_json: _Optional[bytes] = ...) -> None: ...

class GetOperateStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOperateStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: int
    def __init__(self, status: _Optional[int] = ...) -> None: ...

class SetOperateStatusRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: int
    def __init__(self, status: _Optional[int] = ...) -> None: ...

class SetOperateStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvokeServiceStreamResponse(_message.Message):
    __slots__ = ("code", "message", "chunk_data", "is_final", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_DATA_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    chunk_data: bytes
    is_final: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., chunk_data: _Optional[bytes] = ..., is_final: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InvokeServiceBidiRequest(_message.Message):
    __slots__ = ("service_name", "data", "message_type", "metadata", "is_first", "auth_info")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IS_FIRST_FIELD_NUMBER: _ClassVar[int]
    AUTH_INFO_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    data: bytes
    message_type: str
    metadata: _containers.ScalarMap[str, str]
    is_first: bool
    auth_info: str
    def __init__(self, service_name: _Optional[str] = ..., data: _Optional[bytes] = ..., message_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., is_first: _Optional[bool] = ..., auth_info: _Optional[str] = ...) -> None: ...

class InvokeServiceBidiResponse(_message.Message):
    __slots__ = ("code", "message", "data", "message_type", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    data: bytes
    message_type: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., data: _Optional[bytes] = ..., message_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
