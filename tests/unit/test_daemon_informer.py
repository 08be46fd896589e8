"""Informer logic against a scripted fake list/watch function (the client's call shape)."""

import json

from kubernetes.client.exceptions import ApiException

from node_daemon.informer import Backoff, Informer, iter_lines


def obj(name, rv, ns=None):
    meta = {"name": name, "resourceVersion": str(rv)}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "spec": {"v": rv}}


class Resp:
    def __init__(self, body=None, events=(), chunk=7):
        self.body, self.chunk = body, chunk
        self.raw = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    @property
    def data(self):
        return json.dumps(self.body).encode()

    def stream(self, amt=None, decode_content=False):
        for i in range(0, len(self.raw), self.chunk):  # events split across chunks on purpose
            yield self.raw[i:i + self.chunk]

    def release_conn(self):
        pass

    def close(self):
        pass


def listing(items, rv, cont=None):
    meta = {"resourceVersion": str(rv), **({"continue": cont} if cont else {})}
    return Resp(body={"kind": "NodeList", "metadata": meta, "items": items})


def watching(*events):
    return Resp(events=events)


class Script:
    """Plays responses (or raises exceptions) in order; stops the informer when exhausted."""

    def __init__(self, *steps):
        self.steps, self.calls, self.informer = list(steps), [], None

    def __call__(self, **kw):
        self.calls.append(kw)
        if not self.steps:
            self.informer.stop_event.set()
            raise ConnectionError("script exhausted")
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def run(script, **kw):
    events, waits = [], []
    inf = Informer(script, name="nodes", label_selector="a!=b",
                   on_add=lambda o: events.append(("add", o["metadata"]["name"])),
                   on_update=lambda old, new: events.append(("update", new["metadata"]["name"])),
                   on_delete=lambda o: events.append(("delete", o["metadata"]["name"])),
                   on_error=lambda name, e: events.append(("error", type(e).__name__)),
                   wait=lambda d: waits.append(d) or False, **kw)
    script.informer = inf
    inf.run()
    return inf, events, waits


def test_list_then_watch_resumes_from_last_resource_version_without_relisting():
    script = Script(
        listing([obj("a", 1), obj("b", 2, ns="x")], rv=10),
        watching({"type": "ADDED", "object": obj("c", 11)},
                 {"type": "MODIFIED", "object": obj("a", 12)},
                 {"type": "DELETED", "object": obj("b", 13, ns="x")},
                 {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}),
        watching({"type": "ADDED", "object": obj("d", 21)}),  # after the server closed the watch
    )
    inf, events, _ = run(script)
    assert inf.synced.is_set()
    assert events[:5] == [("add", "a"), ("add", "b"), ("add", "c"), ("update", "a"), ("delete", "b")]
    assert events[5] == ("add", "d")
    list_call, w1, w2 = script.calls[:3]
    assert list_call["_preload_content"] is False and list_call["label_selector"] == "a!=b"
    assert "watch" not in list_call
    assert (w1["watch"], w1["resource_version"], w1["allow_watch_bookmarks"]) == (True, "10", True)
    assert w2["resource_version"] == "20"  # the bookmark's, not a relist
    assert sorted(o["metadata"]["name"] for o in inf.list()) == ["a", "c", "d"]
    assert inf.get("a")["spec"]["v"] == 12 and inf.get("x/b") is None


def test_410_error_event_relists_and_reports_deletions_missed_meanwhile():
    script = Script(
        listing([obj("a", 1), obj("b", 2)], rv=10),
        watching({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}),
        listing([obj("a", 1), obj("c", 30)], rv=31),
        watching({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "32"}}}),
    )
    inf, events, waits = run(script)
    assert events == [("add", "a"), ("add", "b"), ("delete", "b"), ("add", "c")]
    assert "watch" not in script.calls[2] and script.calls[3]["resource_version"] == "31"
    assert waits == []  # a 410 relists at once, no backoff


def test_410_http_status_on_watch_start_relists():
    script = Script(listing([obj("a", 1)], rv=5), ApiException(status=410, reason="Gone"),
                    listing([obj("a", 2)], rv=40), watching())
    inf, events, _ = run(script)
    assert events[:2] == [("add", "a"), ("update", "a")]
    assert script.calls[3]["resource_version"] == "40"


def test_errors_back_off_keep_the_cache_and_resume_from_the_same_version():
    script = Script(listing([obj("a", 1)], rv=5), ConnectionError("refused"),
                    ApiException(status=500, reason="boom"), ConnectionError("refused"),
                    watching({"type": "ADDED", "object": obj("b", 6)}))
    inf, events, waits = run(script, backoff=Backoff(initial=1, cap=3))
    # delays grow (jittered within [ceiling/2, ceiling]) and are capped
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 1.5 <= waits[2] <= 3
    assert [c.get("resource_version") for c in script.calls[1:5]] == ["5"] * 4
    assert sum(1 for c in script.calls if "watch" not in c) == 1  # never relisted
    assert [e for e in events if e[0] == "error"][:3] == [
        ("error", "ConnectionError"), ("error", "ApiException"), ("error", "ConnectionError")]
    assert sorted(o["metadata"]["name"] for o in inf.list()) == ["a", "b"]


def test_no_sync_flag_before_list_succeeds():
    script = Script(ConnectionError("down"))
    inf, _, waits = run(script)
    assert not inf.synced.is_set() and inf.list() == [] and len(waits) >= 1


def test_paged_list_follows_continue_tokens():
    script = Script(listing([obj("a", 1)], rv=7, cont="tok"), listing([obj("b", 2)], rv=8), watching())
    inf, events, _ = run(script, page_size=1)
    assert script.calls[0]["limit"] == 1 and script.calls[1]["_continue"] == "tok"
    assert script.calls[2]["resource_version"] == "8"
    assert {e for e in events if e[0] == "add"} == {("add", "a"), ("add", "b")}


def test_iter_lines_joins_split_events_and_skips_blank_lines():
    assert list(iter_lines([b'{"a":', b'1}\n\n{"b"', b':2}\n{"c":3}'])) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_watches_closed_at_once_without_events_back_off_instead_of_spinning():
    script = Script(listing([obj("a", 1)], rv=5), watching(), watching(),
                    watching({"type": "ADDED", "object": obj("b", 6)}))
    inf, events, waits = run(script, backoff=Backoff(initial=1, cap=8), clock=lambda: 0.0)
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2
    assert ("add", "b") in events


def test_a_malformed_object_in_a_list_does_not_fail_the_list():
    """Keys are text whatever the metadata holds: before, a list as name made the LIST's
    cache unhashable (TypeError), so no object of that kind was ever seen again."""
    bad = [{"metadata": {"name": ["x"], "resourceVersion": "2"}}, {"metadata": "junk"}, "junk"]
    script = Script(listing([obj("a", 1), *bad], rv=5), watching())
    inf, events, _ = run(script)
    assert ("add", "a") in events and not [e for e in events if e[0] == "error"]
    assert inf.synced.is_set() and bad[0] in inf.list()  # kept for the converters to refuse


def test_transform_shapes_what_is_cached_and_handed_on_in_lists_and_watches():
    def slim(o):
        return {"metadata": o["metadata"]}  # what a consumer that reads only metadata keeps

    script = Script(listing([obj("a", 1)], rv=10), watching({"type": "ADDED", "object": obj("c", 11)},
                                                            {"type": "MODIFIED", "object": obj("a", 12)}))
    inf, events, _ = run(script, transform=slim)
    assert events[:3] == [("add", "a"), ("add", "c"), ("update", "a")]
    assert all(set(o) == {"metadata"} for o in inf.list())
    assert inf.get("a")["metadata"]["resourceVersion"] == "12"  # still diffed by resourceVersion


def test_cache_keeps_only_what_a_relist_needs_and_handlers_still_get_whole_objects():
    from policy.store import pod_key_only

    script = Script(
        listing([obj("a", 1), obj("b", 2)], rv=10),
        watching({"type": "MODIFIED", "object": obj("a", 11)}, {"type": "ERROR", "object": {"code": 410}}),
        listing([obj("a", 11), obj("c", 12)], rv=20),  # b deleted meanwhile; a unchanged
    )
    inf, events, _ = run(script, cache=pod_key_only)
    assert ("update", "a") in events and events.count(("update", "a")) == 1  # the relist saw rv 11 again
    assert ("delete", "b") in events and ("add", "c") in events
    assert all(set(o["metadata"]) <= {"name", "namespace", "resourceVersion"} and set(o) == {"metadata"}
               for o in inf.list())


def test_the_first_list_hands_each_page_on_before_reading_the_next():
    """At 150k pods a LIST held every page's objects until its end (~300 MB at the peak); now a
    page is cached and handed on before the next is asked for."""
    calls_when_added: dict[str, int] = {}
    script = Script(listing([obj("a", 1)], rv=10, cont="t1"), listing([obj("b", 2)], rv=10), watching())
    inf = Informer(script, name="pods", on_add=lambda o: calls_when_added.setdefault(
        o["metadata"]["name"], len(script.calls)), wait=lambda d: False)
    script.informer = inf
    inf.run()
    assert calls_when_added == {"a": 1, "b": 2}  # a before the second page was requested
    assert script.calls[1]["_continue"] == "t1"
