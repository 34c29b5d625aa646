# lbtwist: `make run` starts a demo balancer, `make test` runs the whole suite.
# The virtualenv is built on the distribution's Python when it is 3.10 or
# later: distributions compile it with profile-guided and link-time
# optimisation, which a default source build (pyenv's, say) lacks, and
# lbtwist runs faster on it.  PYTHON=... chooses another interpreter.
PYTHON ?= $(or $(shell for p in /usr/bin/python3 python3; do \
	  $$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
	  && { echo $$p; break; }; done),python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-deps bench clean soak

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# ARGS adds options, e.g. make run ARGS="--mode http --admin tcp:9100:interface=127.0.0.1"
run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= lb --demo $(ARGS)

test: $(STAMP) test-deps
	$(BIN)/ruff check lbtwist tests
	$(BIN)/mypy lbtwist
	$(BIN)/trial --reactor=lbtwist --reporter=text tests

# Debian tools the integration tests drive (each command is its package's
# name); installed when missing and run as root, else those tests skip.
test-deps:
	@missing=""; for t in curl wrk chromium slowhttptest; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	      || echo "note: could not install$$missing; tests that need them are skipped"; \
	  else echo "note:$$missing not installed; tests that need them are skipped"; fi; \
	fi

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) _trial_temp build *.egg-info

# The long chaos run: minutes of mixed traffic with flapping backends and
# 100,000 connections (SOAK_ARGS="--duration 3600" for an hour), then the
# chaos suite at full scale.
soak: $(STAMP) test-deps
	$(BIN)/python soak/soak.py $(SOAK_ARGS)
	LBTWIST_CHAOS_CONNECTIONS=100000 LBTWIST_FUZZ_EXAMPLES=3000 LBTWIST_CHAOS_REPORT=1 \
	  $(BIN)/trial --reactor=lbtwist --reporter=text tests.chaos
