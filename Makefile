# Every target CI runs is here; .ci/run calls `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck contracts ops-check unit integration bench clean format

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestrator demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The layers and import rules in pyproject.toml ([tool.importlinter]).
contracts: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

# The container image, docker-compose.yml and deploy/ (no container engine needed):
# hadolint lints the Dockerfile, docker-compose (Debian's) validates the compose file,
# kubectl renders each kustomize overlay and kubernetes-validate checks every rendered
# object against the Kubernetes schemas it bundles (offline; the KEDA ScaledObject, a
# CRD it has no schema for, is checked by tests/unit/test_deploy.py).
OVERLAYS := dev prod
ops-check: $(STAMP)
	$(BIN)/hadolint Dockerfile
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile scripted config -q
	@set -e; for overlay in $(OVERLAYS); do \
		echo "kubectl kustomize deploy/overlays/$$overlay | kubernetes-validate --strict"; \
		kubectl kustomize deploy/overlays/$$overlay > $(VENV)/deploy-$$overlay.yaml; \
		$(BIN)/kubernetes-validate --strict --quiet $(VENV)/deploy-$$overlay.yaml; \
	done

test: lint typecheck contracts ops-check
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/orchestrator bench

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
