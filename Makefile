# cryoconf — the two set-up commands:
#   make demo   simulate a small ADK dataset, train a short SBI model on a two-mode ADK
#               ensemble and write posterior plots (installs what it needs)
#   make test   run the test suite (installs what it needs)
#
# Uses the active Python environment. GPU users: install your CUDA build of
# torch first; when no torch is importable, the CPU build $(TORCH_SPEC) is installed.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := .make/installed
DEMO_OUT ?= demo_out

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev,examples]"
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m cryoconf demo -o $(DEMO_OUT)

test: $(STAMP)
	$(PYTHON) -m pytest -q

bench: $(STAMP)
	$(PYTHON) benchmarks/simulate_throughput.py

clean:
	rm -rf .make $(DEMO_OUT) .pytest_cache
