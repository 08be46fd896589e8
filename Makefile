# podwire developer entry points. The README's two commands are `make demo` and `make test`.
PYTHON ?= python3
SOURCES := $(shell find cni_plugin ipam netkit -name '*.py') packaging/podwire.spec
DAEMON_SOURCES := $(shell find node_daemon proxy netkit -name '*.py') packaging/podwire-daemon.spec packaging/daemon_entry.py

.PHONY: dist dist-daemon image kind test demo demo-one-node bench bench-all clean

dist: dist/podwire/podwire

dist/podwire/podwire: $(SOURCES)
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/podwire.spec
	@touch $@

dist-daemon: dist/podwire-daemon/podwire-daemon

dist/podwire-daemon/podwire-daemon: $(DAEMON_SOURCES)
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/podwire-daemon.spec
	@touch $@

image: dist dist-daemon
	$(PYTHON) packaging/image.py --out dist/podwire-image.tar --name docker.io/podwire/podwire:dev

kind:
	packaging/kind-up.sh

test: dist
	$(PYTHON) -m pytest

demo: image
	$(PYTHON) -m e2e.demo

demo-one-node: dist
	$(PYTHON) scripts/demo_one_node.py

bench: dist
	$(PYTHON) bench/cni_latency.py

bench-all: dist
	$(PYTHON) bench/run_all.py

clean:
	rm -rf build dist
