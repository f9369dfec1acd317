# The commands people type. Logic lives in scripts/; each target is one line of intent.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help run test bench chaos cluster-chaos screenshots catalog lint lint-deploy fmt brokers-down

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## Install and start RabbitMQ, Redis, ingest, deliverer and an example receiver; show an event flowing
	@scripts/run.sh

test: ## Install and start test brokers on their own ports, run every test, stop the brokers
	@scripts/test.sh

bench: ## Measure throughput, latency, isolation and memory against the broker ceiling (release build)
	@scripts/bench.sh

chaos: ## Kill and restart deliverers, RabbitMQ and Redis under load; reconcile (CHAOS_EVENTS, default 20000)
	@scripts/chaos.sh

cluster-chaos: ## Kill, partition and fill a 3-node RabbitMQ cluster and fail over Redis under load; reconcile (root; CLUSTER_EVENTS, default 20000)
	@scripts/cluster-chaos.sh

screenshots: ## Run the console's browser tests alone and keep their screenshots in docs/console
	@scripts/screenshots.sh

catalog: ## Load catalog/event-types.json into a running ingest (HOOKLINE_API, HOOKLINE__API__TOKEN)
	@scripts/load-catalog.sh

lint-deploy: ## Build every kustomize overlay and component, validate manifests, check alert rules and the dashboard
	@scripts/lint-deploy.sh

lint: ## rustfmt and clippy, warnings denied
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

brokers-down: ## Stop the brokers of every instance (run, test, bench, chaos)
	@for instance in run test bench chaos; do scripts/brokers.sh down $$instance; done
