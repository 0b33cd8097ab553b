# `sam build`'s build of the five Lambda functions (template.yaml: `BuildMethod: makefile`, run in
# the repository thanks to `build_in_source = true` in samconfig.toml).
#
# SAM calls one `build-<LogicalId>` target per function. The first one runs a single
# `cargo lambda build` for all five binaries: their dependencies compile once, with one feature
# set, instead of five times; the other targets find the binaries fresh and only copy them.
# Needs cargo-lambda (`pip install cargo-lambda`, which brings zig) and
# `rustup target add aarch64-unknown-linux-gnu`.

FUNCTIONS := sender recorder webhooks status health-check
CARGO_LAMBDA ?= cargo lambda

.PHONY: lambdas build-SenderFunction build-RecorderFunction build-WebhooksFunction \
	build-StatusFunction build-HealthCheckFunction

lambdas:
	@test -e .git || test -n "$(ALLOW_SCRATCH_BUILD)" || { \
	  echo "error: this is a copy of the repository (SAM's scratch directory): run"; \
	  echo "  sam build --build-in-source (samconfig.toml sets it) so cargo reuses target/,"; \
	  echo "  or set ALLOW_SCRATCH_BUILD=1 to build from scratch anyway."; exit 1; }
	$(CARGO_LAMBDA) build --release --arm64 --locked $(addprefix --package ,$(FUNCTIONS))

build-SenderFunction: lambdas
	cp target/lambda/sender/bootstrap "$(ARTIFACTS_DIR)/bootstrap"

build-RecorderFunction: lambdas
	cp target/lambda/recorder/bootstrap "$(ARTIFACTS_DIR)/bootstrap"

build-WebhooksFunction: lambdas
	cp target/lambda/webhooks/bootstrap "$(ARTIFACTS_DIR)/bootstrap"

build-StatusFunction: lambdas
	cp target/lambda/status/bootstrap "$(ARTIFACTS_DIR)/bootstrap"

build-HealthCheckFunction: lambdas
	cp target/lambda/health-check/bootstrap "$(ARTIFACTS_DIR)/bootstrap"
