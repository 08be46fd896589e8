"""JSON for the plugin's start-up path, straight on CPython's C accelerator `_json`.

Why not `json`: the package imports `re` (and with it enum, functools, collections, the regex
compiler) for patterns that only its pure-Python fallback and its whitespace skipping use: ~8 ms of
every plugin start in the frozen binary, more than the reference plugin's whole ADD. The C scanner and
encoder that `json` itself uses do all of the real work; this module gives them the context object
they read and does the two things `json` added around them (whitespace, trailing data).

`loads` and `dumps` give what `json.loads` and `json.dumps` with default arguments give (a unit test
compares them); errors are `json.JSONDecodeError`, and only bad input pays for importing `json`.
"""

import _json

_WS = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _DecoderContext:
    """The attributes `_json.make_scanner` reads from a `json.JSONDecoder` (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict = {}


_scan = _json.make_scanner(_DecoderContext())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder


def _not_serializable(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _error(msg: str, doc: str, pos: int) -> ValueError:
    from json import JSONDecodeError

    return JSONDecodeError(msg, doc, pos)


def loads(data: str | bytes):
    """One JSON document (str, or UTF-8 bytes as a runtime writes them) -> Python objects."""
    if isinstance(data, (bytes, bytearray)):
        if data[:3] == b"\xef\xbb\xbf":  # json.loads accepts a UTF-8 BOM on bytes
            data = data[3:]
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _error(f"not UTF-8 ({e.reason} at byte {e.start})", "", 0) from None
    elif not isinstance(data, str):
        raise TypeError(f"the JSON object must be str or bytes, not {type(data).__name__}")
    if data.startswith("\ufeff"):
        raise _error("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    start = len(data) - len(data.lstrip(_WS))
    try:
        obj, end = _scan(data, start)
    except StopIteration as e:
        raise _error("Expecting value", data, e.value) from None
    except SystemError:
        # The scanner raises json.decoder.JSONDecodeError, which it only looks up in sys.modules:
        # not loaded, it fails without an exception. Load it and scan again for the real error.
        import json.decoder  # noqa: F401

        obj, end = _scan(data, start)
    if end != len(data) and data[end:].strip(_WS):
        raise _error("Extra data", data, end + len(data[end:]) - len(data[end:].lstrip(_WS)))
    return obj


def dumps(obj) -> str:
    """`json.dumps(obj)` with its defaults (ASCII output, ', ' and ': ' separators)."""
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    # a fresh marker dict per call, as json's: it detects circular references (ValueError)
    encode = _json.make_encoder({}, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ",
                                False, False, True)
    return "".join(encode(obj, 0))
