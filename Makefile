# lbtwist: `make run` starts a demo balancer, `make test` runs the whole suite;
# plain `make` lists the targets.
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

.PHONY: help venv run test test-deps bench clean soak
.DEFAULT_GOAL := help

# Each target's `## text` is its line in `make help`.
help: ## list the targets
	@echo "make TARGET, where TARGET is one of:"
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "then '. $(BIN)/activate' (or prefix $(BIN)/) to run twistd, trial and lbtwist"

# setup.py maps the packages from the project's root (package_dir), so a
# plain editable install is a .pth file naming this directory: twistd finds
# the plugin in twisted/plugins here, with no "compat" editable mode.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) ## build .venv with lbtwist and the test tools installed

# ARGS adds options, e.g. make run ARGS="--mode http --admin tcp:9100:interface=127.0.0.1"
run: $(STAMP) ## the demo: three backends and the balancer on 127.0.0.1:8080 (ARGS=...)
	$(BIN)/twistd --nodaemon --pidfile= lb --demo $(ARGS)

test: $(STAMP) test-deps ## ruff, mypy, then the whole trial suite
	$(BIN)/ruff check lbtwist tests
	$(BIN)/mypy lbtwist tests/public_types.py
	$(BIN)/trial --reactor=lbtwist --reporter=text tests

# Debian tools the integration tests drive (COMMAND:PACKAGE where the two
# differ: etcd is in etcd-server, h2load and nghttp in nghttp2-client);
# installed when missing and run as root, else those tests skip.
test-deps: ## install the Debian tools the integration tests drive (as root)
	@missing=""; for t in curl wrk openssl chromium slowhttptest etcd:etcd-server h2load:nghttp2-client systemd-socket-activate:systemd; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	      || echo "note: could not install$$missing; tests that need them are skipped"; \
	  else echo "note:$$missing not installed; tests that need them are skipped"; fi; \
	fi

# BENCH_ARGS passes options to bench/bench.py, e.g. BENCH_ARGS="--help".
bench: $(STAMP) ## lbtwist against HAProxy and nginx (BENCH_ARGS=...)
	bash bench/run.sh $(BENCH_ARGS)

clean: ## remove .venv and build leftovers
	rm -rf $(VENV) _trial_temp build *.egg-info

# The long chaos run: minutes of mixed traffic with flapping backends and
# 100,000 connections (SOAK_ARGS="--duration 3600" for an hour), the same
# with two worker processes and one killed every 30 s, ten upgrades under
# load, ten minutes of changes to three balancers sharing etcd, restarted
# every minute (soak/cluster.py), then the chaos suite at full scale.
soak: $(STAMP) test-deps ## the long chaos run and the cluster soak (SOAK_ARGS=..., CLUSTER_SOAK_ARGS=...)
	$(BIN)/python soak/soak.py $(SOAK_ARGS)
	$(BIN)/python soak/soak.py --lb-workers 2 --connections 20000 $(SOAK_ARGS)
	LBTWIST_UPGRADES=10 $(BIN)/trial --reactor=lbtwist tests.test_workers.UpgradeTests
	$(BIN)/python soak/cluster.py $(CLUSTER_SOAK_ARGS)
	LBTWIST_CHAOS_CONNECTIONS=100000 LBTWIST_FUZZ_EXAMPLES=3000 LBTWIST_CHAOS_REPORT=1 \
	  $(BIN)/trial --reactor=lbtwist --reporter=text tests.chaos
