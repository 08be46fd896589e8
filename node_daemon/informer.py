"""A generic informer over the `kubernetes` client: list, then watch from the resourceVersion.

Why not the client's models or its Watch helper: objects are delivered as the plain JSON dicts the
API server sent (`_preload_content=False` + json.loads), which is several times faster than model
deserialization and is what the proxy consumes. Why not `kubernetes.informer`: we need the exact
recovery rules below, testable with a fake list function.

- LIST (paged) fills a cache keyed namespace/name; `synced` is set after the first LIST.
- WATCH resumes from the last resourceVersion seen (events and bookmarks) after a disconnect.
- 410 Gone (HTTP status or ERROR event) -> relist; the relist is diffed against the cache, so
  objects deleted meanwhile produce delete callbacks.
- Any other error -> exponential backoff with jitter, then resume. The cache keeps the last good
  state while the API server is unreachable.
Callbacks run on the informer's thread and should only record and trigger a sync.
"""

from __future__ import annotations

import builtins
import json
import logging
import random
import socket
import threading
import time
from typing import Callable, Iterable, Iterator

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


MIN_WATCH_SECONDS = 1.0  # a watch closed sooner than this without a single event counts as failed


class Gone(Exception):
    """The resourceVersion we hold is too old: relist."""


def _meta(obj) -> dict:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def key_of(obj: dict) -> str:
    """namespace/name as text, whatever the object holds: a malformed object stays in the cache
    (the converters refuse it, with a reason) instead of failing the whole LIST."""
    meta = _meta(obj)
    ns, name = meta.get("namespace"), meta.get("name", "")
    return f"{ns}/{name}" if ns else str(name)


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a chunked watch stream into JSON lines (an event may span chunks)."""
    buf = b""
    for chunk in chunks:
        buf += chunk if isinstance(chunk, bytes) else chunk.encode()
        *lines, buf = buf.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buf.strip():
        yield buf


class Backoff:
    """Exponential backoff with full jitter: initial, x2 per failure, capped."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.initial, self.cap, self.failures = initial, cap, 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * (2 ** self.failures))
        self.failures += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


Callback = Callable[..., None]


class Informer:
    def __init__(self, list_fn: Callable, *, name: str, label_selector: str | None = None,
                 field_selector: str | None = None, on_add: Callback | None = None,
                 on_update: Callback | None = None, on_delete: Callback | None = None,
                 on_error: Callable[[str, Exception], None] | None = None,
                 transform: Callable[[dict], dict] | None = None,
                 cache: Callable[[dict], dict] | None = None,
                 watch_timeout: int = 300, page_size: int = 500, backoff: Backoff | None = None,
                 wait: Callable[[float], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.list_fn, self.name = list_fn, name
        self.selectors = {k: v for k, v in (("label_selector", label_selector),
                                            ("field_selector", field_selector)) if v}
        self.on_add, self.on_update, self.on_delete = on_add, on_update, on_delete
        self.on_error = on_error
        # applied to every object before it is cached or handed on: a consumer that needs a few
        # fields of a big object (a Pod) keeps only those in memory
        self.transform = transform
        # what the cache keeps of an object handed on (default: all of it). A consumer that keeps
        # its own records needs only the key and resourceVersion here (relists are diffed on them);
        # at 150k pods that is ~230 MB instead of ~580 MB (bench/policy_scale.py)
        self.keep = cache
        self.watch_timeout, self.page_size = watch_timeout, page_size
        self.backoff = backoff or Backoff()
        self.stop_event = threading.Event()
        self.wait = wait or self.stop_event.wait  # returns True when stopping
        self.clock = clock
        self._watch_started = 0.0
        self.synced = threading.Event()
        self.resource_version: str | None = None
        self._cache: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._resp = None
        self._thread: threading.Thread | None = None

    # ---- cache -------------------------------------------------------------------------
    def list(self) -> list[dict]:
        with self._lock:
            return list(self._cache.values())

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._cache.get(key)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> "Informer":
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        # Wake a watch blocked in recv(): shutting the socket down does; resp.close() from
        # another thread would block on the reader's buffer lock instead.
        sock = getattr(getattr(self._resp, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(timeout)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                if self._watch() > 0 or self.clock() - self._watch_started >= MIN_WATCH_SECONDS:
                    self.backoff.reset()  # a watch that ended normally (server timeout) is healthy
                elif self.wait(self.backoff.next()):  # closed at once, empty: do not spin on it
                    break
            except Gone:
                log.info("%s: resourceVersion %s expired (410), relisting", self.name, self.resource_version)
                self.resource_version = None
            except Exception as e:  # noqa: BLE001 - any API/transport error: back off and resume
                if self.stop_event.is_set():
                    break
                delay = self.backoff.next()
                log.warning("%s: %s: %s; retrying in %.1fs", self.name, type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "", delay)
                if self.on_error:
                    self.on_error(self.name, e)
                if self.wait(delay):
                    break

    # ---- LIST --------------------------------------------------------------------------
    def _relist(self) -> None:
        """LIST page by page; each page is cached and handed on before the next is read, so at
        most one page of full objects is alive (at 150k pods, a list of every page's objects
        was ~300 MB at its peak, and the freed memory stayed fragmented in the process). Keys
        the cache had and the list did not are deleted at the end; `synced` is set after that."""
        seen: set[str] = set()
        # a relist over a filled cache hands its adds and updates on after the deletions it finds
        # (an address a deleted pod held may be a new pod's now); the first LIST at once
        later: builtins.list | None = [] if self._cache else None
        token, rv = None, None
        while True:
            kwargs = dict(self.selectors, limit=self.page_size, _preload_content=False)
            if token:
                kwargs["_continue"] = token
            try:
                body = self._call(**kwargs)
            except ApiException as e:
                if e.status == 410 and token:  # continue token expired: start the list over
                    seen, token = set(), None
                    later = [] if later is not None else None
                    continue
                raise
            meta = body.get("metadata") or {}
            rv, token = meta.get("resourceVersion"), meta.get("continue")
            page = body.get("items") or []
            del body
            self._merge(map(self.transform, page) if self.transform else page, seen, later)
            del page
            if not token:
                break
        self._drop_unseen(seen)
        for cb, *objs in later or ():
            self._emit(cb, *objs)
        self.resource_version = rv
        self.backoff.reset()
        if not self.synced.is_set():
            log.info("%s: initial list done (%d objects, rv %s)", self.name, len(seen), rv)
        self.synced.set()

    def _call(self, **kwargs) -> dict:
        resp = self.list_fn(**kwargs)
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _merge(self, objs, seen: set[str], later: builtins.list | None) -> None:
        """One page of a LIST: cached, and handed on (or kept in `later`) as adds (new keys) or
        updates (another resourceVersion than the cached one)."""
        keep = self.keep
        event: tuple
        for obj in objs:
            k = key_of(obj)
            seen.add(k)
            with self._lock:
                before = self._cache.get(k)
                self._cache[k] = keep(obj) if keep else obj
            if before is None:
                event = (self.on_add, obj)
            elif _rv(before) != _rv(obj):
                event = (self.on_update, before, obj)
            else:
                continue
            if later is None:
                self._emit(*event)
            else:
                later.append(event)

    def _drop_unseen(self, seen: set[str]) -> None:
        with self._lock:
            gone = [(k, o) for k, o in self._cache.items() if k not in seen]
            for k, _ in gone:
                del self._cache[k]
        for _, obj in gone:
            self._emit(self.on_delete, obj)

    # ---- WATCH -------------------------------------------------------------------------
    def _watch(self) -> int:
        """Follow one watch until the server ends it; returns the number of lines received."""
        self._watch_started, received = self.clock(), 0
        try:
            resp = self.list_fn(
                **self.selectors, watch=True, resource_version=self.resource_version,
                allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                _preload_content=False, _request_timeout=(10, self.watch_timeout + 15))
        except ApiException as e:
            if e.status == 410:
                raise Gone() from None
            raise
        self._resp = resp
        try:
            for line in iter_lines(resp.stream(amt=None, decode_content=False)):
                if self.stop_event.is_set():
                    break
                received += 1
                self._event(json.loads(line))
        finally:
            self._resp = None
            resp.release_conn()
        return received

    def _event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        rv = _rv(obj)
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        if self.transform:
            obj = self.transform(obj)
        k = key_of(obj)
        with self._lock:
            before = self._cache.get(k)
            if kind == "DELETED":
                self._cache.pop(k, None)
            else:
                self._cache[k] = self.keep(obj) if self.keep else obj
        if rv:
            self.resource_version = rv
        if kind == "DELETED":
            self._emit(self.on_delete, obj)
        elif before is None:
            self._emit(self.on_add, obj)
        else:
            self._emit(self.on_update, before, obj)

    def _emit(self, cb, *objs) -> None:
        if cb is None:
            return
        try:
            cb(*objs)
        except Exception:  # noqa: BLE001 - a handler bug must not kill the watch
            log.exception("%s: event handler failed", self.name)


def _rv(obj: dict) -> str | None:
    return _meta(obj).get("resourceVersion")
