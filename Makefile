# README's two commands: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo test check lint typecheck bench bench-peers fuzz clean sshd-deps

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# The SSH tests start their own sshd on 127.0.0.1; Debian's openssh-server provides it.
# The become tests run steps through a real sudo; Debian's sudo provides it.
sshd-deps:
	@if [ ! -x /usr/sbin/sshd ]; then \
		echo "installing openssh-server for the SSH tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssh-server >/dev/null; \
	fi
	@if [ ! -x /usr/bin/sudo ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing sudo for the become tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null; \
	fi

demo: $(VENV)/.installed
	$(VENV)/bin/rollout demo

# Byte-compiled once before the tests, as an installed copy would be: hundreds of tests
# start `python -m rollout`, and with PYTHONDONTWRITEBYTECODE set (CI images often set
# it) each would compile every module it imports again (about 0.15 s a process).
test: $(STAMP) sshd-deps
	$(PY) -m compileall -q rollout examples >/dev/null
	$(PY) -m pytest -q

# The long versions of the exhaustive and randomised tests; one line per suite.
fuzz: $(STAMP) sshd-deps
	ROLLOUT_FUZZ_EXAMPLES=$${ROLLOUT_FUZZ_EXAMPLES:-2000} $(PY) -m pytest -q -m fuzz -p no:cacheprovider --timeout 3600
	ROLLOUT_MODEL_EXAMPLES=$${ROLLOUT_MODEL_EXAMPLES:-2000} $(PY) -m pytest -q -p no:cacheprovider --timeout 3600 tests/test_engine_model.py
	ROLLOUT_CRASH_ALL=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_crash.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rollout tests bench examples
	$(VENV)/bin/ruff format --check rollout tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict rollout

check: lint typecheck test


bench: $(STAMP)
	$(PY) bench/run.py

# The tools the benches compare against, in a virtualenv of their own (git-ignored): they are
# never dependencies of rollout, and the project's .venv stays free of them.
PEERS := bench/.peers-venv
bench-peers: $(PEERS)/.installed

$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet ansible-core pyinfra
	touch $@

clean:
	rm -rf $(VENV) .rollout .pytest_cache .mypy_cache .ruff_cache
