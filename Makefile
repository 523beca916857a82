# The two commands of the README:
#   make demo   set up and run the whole job on the built-in sample pair
#   make test   set up (Python and system packages) and run every check CI runs
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo-output

.PHONY: demo test lint docs bench sysdeps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The test extra brings napari's default Qt binding, PyQt6. A .venv made before that holds
# PyQt5 as well (napari 0.9 deprecates it, and qtpy prefers it when both are there): remove
# it, after the install succeeded, so the tests run on the binding users get.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	@if $(BIN)/python -m pip show -q PyQt5 >/dev/null 2>&1; then \
		echo "Removing PyQt5 from $(VENV): the tests run on PyQt6"; \
		$(BIN)/python -m pip uninstall -q -y PyQt5 PyQt5-Qt5 PyQt5-sip; \
	fi
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/napari-ncc demo -o $(DEMO_OUT)

sysdeps:
	bash tools/install-system-deps.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(VENV)/.installed-test
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site

test: sysdeps lint docs
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest $(PYTEST_ARGS)
	@# The lazy layer again with Dask's array query planning on, where this Dask has it.
	@if $(BIN)/python -c "import dask.array as da; assert hasattr(da, 'array_expr_enabled')"; \
	then DASK_ARRAY__QUERY_PLANNING=True $(BIN)/python -m pytest -q tests/test_lazy.py tests/test_mask_lazy.py tests/test_sources.py; \
	else echo "this Dask has no array query planning: the second run of the lazy tests is skipped"; fi

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build dist $(DEMO_OUT)
