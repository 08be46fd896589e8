"""Fixtures for tests on real namespaces: a node namespace, pod namespaces, the frozen plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.integration.cni_harness import FROZEN, ROOT, Plugin, netns_add, netns_del


@pytest.fixture(scope="session")
def frozen_plugin(tmp_path_factory) -> str:
    """dist/podwire/podwire, (re)built when the sources are newer (make tracks that).

    PODWIRE_PLUGIN_FROM_SOURCE=1 runs `python3 -m cni_plugin` from the checkout instead: for
    developers iterating on the plugin (no PyInstaller build per change, none racing another).
    """
    if os.environ.get("PODWIRE_PLUGIN_FROM_SOURCE") == "1":
        wrapper = tmp_path_factory.mktemp("plugin") / "podwire"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -P -m cni_plugin "$@"\n')
        wrapper.chmod(0o755)
        return str(wrapper)
    subprocess.run(["make", "-s", "dist"], cwd=ROOT, check=True, capture_output=True)
    assert os.access(FROZEN, os.X_OK)
    return FROZEN


@pytest.fixture
def node():
    name = netns_add("pwc-node")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        netns_del(name)


@pytest.fixture
def pods():
    made = []

    def make() -> str:
        name = netns_add("pwc-pod")
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            netns_del(name)


@pytest.fixture
def plugin(frozen_plugin, node) -> Plugin:
    return Plugin(frozen_plugin, node)


@pytest.fixture
def netns():
    """An empty network namespace of this test's own, deleted afterwards (also on failure)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"pwt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
