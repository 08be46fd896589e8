"""One error type carrying a CNI code, and the one place that maps other failures onto codes."""

import errno
import sys

from cni_plugin import wirejson

# Codes from the CNI spec; 100+ are podwire's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_EXISTING = 51
STATE_DRIFT = 100  # CHECK found live state different from prevResult
HOSTPORT_CONFLICT = 101
INTERNAL = 999


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def invalid_config(problem: str, details: str = "") -> CNIError:
    """Code 7 with the spec's wording; `problem` names the field."""
    return CNIError(INVALID_CONFIG, f"invalid network config: {problem}", details)


def to_cni_error(exc: BaseException) -> CNIError:
    """Translate anything raised below the dispatcher into a CNIError."""
    if isinstance(exc, CNIError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, int) and hasattr(exc, "msg"):  # ipam.errors.IPAMError and friends
        return CNIError(code, exc.msg, getattr(exc, "details", ""))
    decoder = sys.modules.get("json.decoder")  # loaded when a JSON error was raised, not before
    if decoder is not None and isinstance(exc, decoder.JSONDecodeError):
        return CNIError(DECODE_FAILURE, f"cannot decode network configuration: {exc}")
    if isinstance(exc, OSError):
        if exc.errno in (errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT):
            return CNIError(TRY_AGAIN, str(exc))
        return CNIError(IO_FAILURE, str(exc))
    return CNIError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def error_json(err: CNIError, version: str) -> str:
    return wirejson.dumps({"cniVersion": version, "code": err.code, "msg": err.msg, "details": err.details})
