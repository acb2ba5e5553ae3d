# make demo — set up .venv and compile specs/mobile_2gb.yaml
# make test — set up .venv and run the whole test suite (golden conformance included)

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.omnic-installed
TORCH  := torch==2.13.0

.PHONY: demo test install schemas clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned, so that nothing later pulls a CUDA build; then omnic with every backend.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e '.[all,farm,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/omnic compile specs/mobile_2gb.yaml -o build/mobile_2gb --force

test: $(STAMP)
	$(VENV)/bin/ruff check omnic tests bench
	$(PY) -m pytest

schemas: $(STAMP)
	$(PY) -m omnic.tools.write_schemas

clean:
	rm -rf build .pytest_cache
