# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint sandbox postgres

# bubblewrap sandboxes the control plane's jobs (tests/test_tenant_isolation.py). Installed
# here when missing and this is root (as in CI); elsewhere those tests skip, or fail under CI.
sandbox:
	@command -v bwrap >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }

# PostgreSQL's server (tests/pg.py starts one in a temporary directory): installed when missing
# and this is root (as in CI); elsewhere the PostgreSQL tests skip, or fail under CI=true.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| { apt-get update -qq && { apt-get install -y -qq postgresql-15 >/dev/null \
			|| apt-get install -y -qq postgresql >/dev/null; }; }

$(BIN)/stoker: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# The CPU build of torch first when none is present: a bare `torch>=` pulls a CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/stoker

install: $(BIN)/stoker

demo: install
	$(BIN)/stoker train examples/tiny.toml --nproc 2

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: install lint sandbox postgres
	$(BIN)/pytest -q
