# emu — the two set-up commands are `make demo` and `make test`; both create .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EMU    := $(VENV)/bin/emu
SEED   := --len 4096 --src-align 0x7e0 --poison 0x960

.PHONY: install demo test golden bench bench-sweep soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot,fuzz]'
	$(PY) -m emu.core.native
	touch $@

install: $(VENV)/.installed

# The seed scenario: copy_from_user of 4096 bytes, one poisoned line in the second half
# of a 64-byte block, on the unrolled path (no CPU features) and on the ERMS path.
demo: install
	$(EMU) diff $(SEED) --cpu none
	$(EMU) diff $(SEED) --cpu erms

# pytest exits 5 when it collects nothing; make treats that as the failure it is.
# lint-imports checks the import contracts in pyproject.toml (docs/architecture.md) first: a
# broken contract fails the build before any test runs.
# scripts/linux-sources installs Debian's linux-source-6.1 / -6.12 (once) and extracts the
# x86 user-copy files the tests/kernel suite reads, into a cache outside the repository.
# scripts/linux-dbg downloads Debian's 6.1 / 6.12 debug vmlinux (once, ~1 GB each) for the
# real-image tests (tests/kernel/test_real_vmlinux.py), into a cache outside the repository.
test: install
	$(VENV)/bin/lint-imports
	scripts/linux-sources
	scripts/linux-dbg
	$(PY) -m pytest -q -m "not slow"

# Speed is measured here, never asserted in tests: emu's harness against a bare Unicorn loop
# on the same machine code, and fast-forward against full re-execution.
bench: install
	$(PY) bench/bench.py
	scripts/linux-dbg
	$(PY) bench/bench_vmlinux.py

# The extended catalog sweep: every era x routine x CPU path x lengths 0..128, 4096, 16384 and
# 65536 x 8x8 alignments x every offset x {#MC, #PF}; prints wall time, cases/s, the rates of
# each part and the largest worker RSS.  Then one grid through the local pool and through
# Dask (1 and 2 workers): cases/s and Dask's overhead.
bench-sweep: install
	$(PY) bench/bench_sweep.py
	$(PY) bench/bench_cluster.py

# The long soak of issue 17: the 125,376-case sweep (eras A-F, 4-16 KiB, 8 alignment pairs,
# every line, every CPU path, #MC and #PF) under ulimit -v, sampling parent and worker RSS.
soak: install
	$(PY) bench/soak.py

golden: install
	$(PY) -m pytest -q tests/golden --update-golden

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
