"""The one error type of ipam: a CNI error code plus msg and details.

Every failure leaves ipam as an IPAMError so the CNI plugin can print it as a
CNI error result unchanged, without knowing where in ipam it came from.
"""

# CNI error codes ipam raises (see the CNI spec, "Error codes").
UNSUPPORTED_FIELD = 2
IO_FAILURE = 5
INVALID_CONFIG = 7
TRY_AGAIN = 11
STATUS_UNAVAILABLE = 50  # STATUS: ADD cannot be served (store not writable)
# STATUS: a range set has no free address: ADD cannot be served, existing pods are fine (51 would
# say they may lose connectivity).
STATUS_EXHAUSTED = 50
POOL_EXHAUSTED = 110  # plugin specific (100+): ADD found no free address


class IPAMError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(code, msg, details)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        if self.details:
            return f"{self.msg}: {self.details}"
        return self.msg


def io_error(action: str, err: OSError) -> IPAMError:
    """An OSError met while touching the store, as code 5 naming what we did."""
    return IPAMError(IO_FAILURE, f"ipam store: cannot {action}", str(err))
