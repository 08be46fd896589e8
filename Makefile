# podwire developer entry points. The README's two commands are `make demo` and `make test`.
PYTHON ?= python3
SOURCES := $(shell find cni_plugin ipam netkit -name '*.py') packaging/podwire.spec
DAEMON_SOURCES := $(shell find node_daemon proxy policy loadbalancer netkit -name '*.py') packaging/podwire-daemon.spec packaging/daemon_entry.py

.PHONY: check lint types unit dist dist-daemon image kind test demo demo-one-node bench bench-all clean

# The fast tier (no root, no build, no cluster; well under a minute): what CI gates on before the rest.
FAST_TESTS := tests/unit e2e/tests
FAST_MARKS := not root and not cluster and not frozen and not slow

check: lint types unit

lint:
	$(PYTHON) -m ruff check .

types:
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest -p no:cacheprovider -q -m "$(FAST_MARKS)" $(FAST_TESTS)

dist: dist/podwire/podwire

# PyInstaller lays out the bundle (_internal/: libpython, loose .pyc, lib-dynload); our launcher replaces its
# bootloader as the executable (packaging/launcher/podwire.c says why), linked to that libpython by $$ORIGIN.
PY_INCLUDE = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PY_LIBDIR = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PY_LDVERSION = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("LDVERSION"))')
dist/podwire/podwire: $(SOURCES) packaging/launcher/podwire.c
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/podwire.spec
	$(CC) -O2 -Wall -Werror -o $@.launcher packaging/launcher/podwire.c -I$(PY_INCLUDE) -L$(PY_LIBDIR) \
		-lpython$(PY_LDVERSION) -Wl,--disable-new-dtags,-rpath,'$$ORIGIN/_internal'
	mv -f $@.launcher $@
	CNI_COMMAND=VERSION $@ </dev/null | grep -q supportedVersions

dist-daemon: dist/podwire-daemon/podwire-daemon

dist/podwire-daemon/podwire-daemon: $(DAEMON_SOURCES)
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/podwire-daemon.spec
	@touch $@

image: dist dist-daemon
	$(PYTHON) packaging/image.py --out dist/podwire-image.tar --name docker.io/podwire/podwire:dev

kind:
	packaging/kind-up.sh

# The kind path run here for real (README, kind section): a private dockerd in a network namespace, a node
# image made offline, `kind create cluster --config manifests/kind-config.yaml`, packaging/kind-up.sh unchanged,
# then the demo's checks. Several minutes warm; the first run builds kind, kubeadm and the node image.
.PHONY: demo-kind kind-e2e
demo-kind: image
	$(PYTHON) -m e2e.kind_demo --podwire-image dist/podwire-image.tar

kind-e2e: image
	PODWIRE_KIND_E2E=1 $(PYTHON) -m pytest -q -p no:cacheprovider e2e/tests/test_kind_cluster.py

test: check dist
	$(PYTHON) -m pytest

# The demo builds only what it runs (no e2e.test, no test images) and says what it builds, for how
# long and what is left; podwire's image is made first (PyInstaller, then the OCI tarball).
# IPFAMILY=ipv6 or dual: the cluster in those families (underlay, Services, pods; every check per family)
IPFAMILY ?= ipv4
demo:
	@echo "== make demo: podwire's image first (make image: PyInstaller for what changed, then the OCI tarball)"
	@$(MAKE) --no-print-directory image
	$(PYTHON) -m e2e.demo --podwire-image dist/podwire-image.tar --ip-family $(IPFAMILY)

demo-one-node: dist
	$(PYTHON) scripts/demo_one_node.py

# Traefik, MetalLB, the Gateway API conformance suite and their images (issue 14), cached; `go` runs niced.
.PHONY: edge-images
edge-images:
	$(PYTHON) -m e2e.edge_images

bench: dist
	$(PYTHON) bench/cni_latency.py

bench-all: dist
	$(PYTHON) bench/run_all.py

clean:
	rm -rf build dist
