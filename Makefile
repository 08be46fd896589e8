# podwire developer entry points. The README's two commands are `make demo` and `make test`.
PYTHON ?= python3
SOURCES := $(shell find cni_plugin ipam netkit -name '*.py') packaging/podwire.spec

.PHONY: dist test demo bench clean

dist: dist/podwire/podwire

dist/podwire/podwire: $(SOURCES)
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/podwire.spec
	@touch $@

test: dist
	$(PYTHON) -m pytest

demo: dist
	$(PYTHON) scripts/demo_one_node.py

bench: dist
	$(PYTHON) bench/cni_latency.py

clean:
	rm -rf build dist
