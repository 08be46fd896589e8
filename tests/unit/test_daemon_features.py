"""node_daemon.features: enabled features start in order; one that cannot start stops the daemon."""
from __future__ import annotations

import importlib
import logging
import sys
import types

import pytest

from node_daemon.features import FEATURES, FeatureError, Host, start_features


class Part:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def stop(self):
        self.log.append(f"stop {self.name}")


def feature(name, log, fail=False):
    mod = types.ModuleType(name)

    def start(host):
        if fail:
            raise TypeError("broken wiring")
        log.append(f"start {name}")
        return [Part(log, name)]

    mod.start = start  # type: ignore[attr-defined]
    sys.modules[name] = mod
    return name


def host(**switches):
    return Host(types.SimpleNamespace(**switches), api=None, registry=None, nodes=None, on_error=lambda *a: None)


def test_enabled_features_start_disabled_ones_do_not():
    log: list = []
    feats = (("a", "a_on", feature("pw_feat_a", log)), ("b", "b_on", feature("pw_feat_b", log)))
    parts = start_features(host(a_on=True, b_on=False), feats)
    assert log == ["start pw_feat_a"] and len(parts) == 1


def test_parts_stop_last_feature_first_each_in_its_own_order():
    """The load balancer (last) releases its addresses before the proxy winds down; within a feature its
    parts stop in the order it gave them (its runners before its lease releases)."""
    log: list = []

    def two_parts(name):
        feature(name, log)
        sys.modules[name].start = lambda host: [Part(log, f"{name}.1"), Part(log, f"{name}.2")]  # type: ignore
        return name

    feats = (("a", "a_on", two_parts("pw_feat_e")), ("b", "b_on", two_parts("pw_feat_f")))
    for part in start_features(host(a_on=True, b_on=True), feats):
        part.stop()
    assert log == ["stop pw_feat_f.1", "stop pw_feat_f.2", "stop pw_feat_e.1", "stop pw_feat_e.2"]


def test_a_feature_that_cannot_start_is_fatal_and_stops_the_started_ones():
    log: list = []
    feats = (("a", "a_on", feature("pw_feat_c", log)), ("broken", "b_on", feature("pw_feat_d", log, fail=True)))
    with pytest.raises(FeatureError, match="broken is enabled but cannot start: TypeError: broken wiring"):
        start_features(host(a_on=True, b_on=True), feats)
    assert log == ["start pw_feat_c", "stop pw_feat_c"]


def cleanable(name, log, fail=False, with_cleanup=True):
    """A feature module with start() and (optionally) cleanup(cfg)."""
    feature(name, log)
    mod = sys.modules[name]
    if with_cleanup:
        def cleanup(cfg):
            if fail:
                raise OSError("nft: no such file")
            log.append(f"cleanup {name} {cfg.tag}")
        mod.cleanup = cleanup  # type: ignore[attr-defined]
    return name


def test_a_disabled_feature_is_cleaned_up_an_enabled_one_is_started_not_cleaned():
    log: list = []
    feats = (("a", "a_on", cleanable("pw_feat_e", log), "pw_feat_e:cleanup"),
             ("b", "b_on", cleanable("pw_feat_f", log), "pw_feat_f:cleanup"))
    parts = start_features(host(a_on=True, b_on=False, tag="cfg"), feats)
    assert log == ["cleanup pw_feat_f cfg", "start pw_feat_e"] and len(parts) == 1


def test_cleanups_without_a_function_or_failing_are_skipped_and_the_rest_goes_on(caplog):
    log: list = []
    feats = (("none yet", "a_on", cleanable("pw_feat_g", log, with_cleanup=False), "pw_feat_g:cleanup"),
             ("failing", "b_on", cleanable("pw_feat_h", log, fail=True), "pw_feat_h:cleanup"),
             ("no such module", "c_on", None, "pw_feat_no_such_module:cleanup"),
             ("fine", "d_on", cleanable("pw_feat_i", log), "pw_feat_i:cleanup"),
             ("three fields", "e_on", feature("pw_feat_j", log)))
    with caplog.at_level(logging.DEBUG, logger="node_daemon.features"):
        parts = start_features(host(a_on=False, b_on=False, c_on=False, d_on=False, e_on=True, tag="x"), feats)
    assert log == ["cleanup pw_feat_i x", "start pw_feat_j"] and len(parts) == 1
    text = caplog.text
    assert "pw_feat_g has no cleanup()" in text
    assert "failing is off but its cleanup failed: OSError" in text
    assert "no such module is off but its cleanup failed: ModuleNotFoundError" in text


def test_a_switch_may_be_a_predicate_and_a_feature_may_have_no_start():
    log: list = []
    feats = (("egress-like", lambda cfg: cfg.on and cfg.cidrs, None, cleanable("pw_feat_k", log) + ":cleanup"),)
    assert start_features(host(on=True, cidrs=(), tag="off"), feats) == []
    assert start_features(host(on=True, cidrs=("10.0.0.0/8",), tag="on"), feats) == []
    assert log == ["cleanup pw_feat_k off"]  # off without CIDRs; on: nothing started, nothing cleaned


def test_the_daemon_cleans_up_proxy_egress_and_policy_when_they_are_off():
    targets = {name: (switch, module, cleanup) for name, switch, module, cleanup in FEATURES}
    assert targets["service proxy"] == ("proxy_enabled", "proxy.feature", "proxy.sync:cleanup")
    assert targets["network policy"][2] == "policy.feature:cleanup"
    switch, module, clean = targets["egress masquerade"]
    assert module is None and clean == "node_daemon.egress:cleanup"
    from node_daemon.config import Config
    assert not switch(Config("n")) and not switch(Config("n", cluster_cidrs=("x",), egress=False))
    assert switch(Config("n", cluster_cidrs=("x",)))
    for target in ("proxy.sync:cleanup", "node_daemon.egress:cleanup"):
        mod, _, fn = target.partition(":")
        assert callable(getattr(importlib.import_module(mod), fn))
