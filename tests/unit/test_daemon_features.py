"""node_daemon.features: enabled features start in order; one that cannot start stops the daemon."""
from __future__ import annotations

import sys
import types

import pytest

from node_daemon.features import FeatureError, Host, start_features


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


def test_a_feature_that_cannot_start_is_fatal_and_stops_the_started_ones():
    log: list = []
    feats = (("a", "a_on", feature("pw_feat_c", log)), ("broken", "b_on", feature("pw_feat_d", log, fail=True)))
    with pytest.raises(FeatureError, match="broken is enabled but cannot start: TypeError: broken wiring"):
        start_features(host(a_on=True, b_on=True), feats)
    assert log == ["start pw_feat_c", "stop pw_feat_c"]
