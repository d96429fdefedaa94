# The two commands a newcomer runs: `make demo` (a whole mission on the embedded AWS) and
# `make test`. Each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test unit functional e2e deploy chaos bench lint format clean tools package ami ami-validate

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lighthpc demo

# The deployment checks (Packer included) run, never skip, in the test command.
test: setup lint tools
	LIGHTHPC_REQUIRE_DEPLOY_TOOLS=1 $(BIN)/python -m pytest -q --durations=5

unit: setup
	$(BIN)/python -m pytest -q tests/unit

functional: setup
	$(BIN)/python -m pytest -q tests/functional

e2e: setup
	$(BIN)/python -m pytest -q tests/e2e

bench: setup
	$(BIN)/python -m bench.bench

deploy: setup tools
	$(BIN)/python -m pytest -q tests/deploy

# Issue 11's size: 4 missions of 100 transactions, 30% of workers lost, 20% Spot notices, every
# event twice, both handlers crashing once, the AWS-fidelity profile on.
chaos: setup
	$(BIN)/lighthpc chaos --missions 4 --transactions 100 --timeout 1200 --json bench/results/chaos.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -q -r chalicelib worker_ami app.py --severity-level high

# Packer (Debian's package) validates worker_ami/packer in tests/deploy; Chromium and its
# driver (Debian's packages, never a downloaded browser) run the dashboard's tests/browser.
tools:
	@command -v packer >/dev/null 2>&1 || apt-get install -y -qq packer >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq packer) >/dev/null 2>&1 \
		|| { echo "packer is needed by the tests: apt-get install packer" >&2; exit 1; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 \
		|| apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
		|| { echo "the browser tests need: apt-get install chromium chromium-driver" >&2; exit 1; }

# The deployable template for one stage: build/$(STAGE)/sam.yaml + deployment.zip, linted.
STAGE ?= dev
package: setup
	$(BIN)/python -m local.package --stage $(STAGE) --out build/$(STAGE)
	$(BIN)/cfn-lint build/$(STAGE)/sam.yaml

# Bake the worker AMI (needs AWS credentials; newer Packer: `packer plugins install
# github.com/hashicorp/amazon` once).
ami:
	CHECKPOINT_DISABLE=1 packer build -var source_revision=$$(git rev-parse HEAD) worker_ami/packer

ami-validate:
	CHECKPOINT_DISABLE=1 packer validate -syntax-only worker_ami/packer

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
