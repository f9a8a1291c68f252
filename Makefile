# Entry points: `make demo`, `make mapping-demo` and `make test`. They create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo mapping-demo test lint sandbox postgres chromium vendor-assets

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

# Debian's Chromium for the dashboard's browser tests (tests/test_dashboard_browser.py, driven
# by Playwright with executable_path, no browser download): installed when missing and this is
# root (as in CI); elsewhere those tests skip, or fail under CI=true.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The dashboard's and API docs' browser assets, vendored from npm into the package (committed;
# run again only to upgrade): uPlot, swagger-ui-dist and ReDoc, each with its licence. One patch:
# ReDoc's sidebar logo comes from its CDN, so the page would reach the internet; it is ours now.
UPLOT := uplot@1.6.32
SWAGGER := swagger-ui-dist@5.36.0
REDOC := redoc@2.5.4
STATIC := src/stoker/server/static
vendor-assets:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack -q $(UPLOT) $(SWAGGER) $(REDOC) >/dev/null \
		&& for f in *.tgz; do mkdir $${f%.tgz} && tar xzf $$f -C $${f%.tgz}; done \
		&& cd $(CURDIR) && u=$$tmp/uplot-*/package && s=$$tmp/swagger-ui-dist-*/package \
		&& r=$$tmp/redoc-*/package \
		&& cp $$u/dist/uPlot.iife.min.js $$u/dist/uPlot.min.css $(STATIC)/ \
		&& cp $$u/LICENSE $(STATIC)/uPlot.LICENSE \
		&& cp $$s/swagger-ui-bundle.js $$s/swagger-ui-bundle.js.LICENSE.txt $$s/swagger-ui.css $(STATIC)/ \
		&& cp $$s/LICENSE $(STATIC)/swagger-ui.LICENSE && cp $$s/NOTICE $(STATIC)/swagger-ui.NOTICE \
		&& cp $$r/bundles/redoc.standalone.js $$r/bundles/redoc.standalone.js.LICENSE.txt $(STATIC)/ \
		&& cp $$r/LICENSE $(STATIC)/redoc.LICENSE && rm -rf $$tmp \
		&& sed -i 's#https://cdn.redoc.ly/redoc/logo-mini.svg#/static/favicon.svg#' \
			$(STATIC)/redoc.standalone.js

$(BIN)/stoker: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# The CPU build of torch first when none is present: a bare `torch>=` pulls a CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/stoker

install: $(BIN)/stoker

demo: install
	$(BIN)/stoker train examples/tiny.toml --nproc 2

# The map-reconstruction pipeline (examples/mapping/README.md): minutes on 2 cores, then
# seconds from the cache. ARGS go to `stoker pipeline run` (e.g. ARGS="--set workers=1").
mapping-demo: install
	$(BIN)/stoker pipeline run examples/mapping/pipeline.toml $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: install lint sandbox postgres chromium
	$(BIN)/pytest -q
