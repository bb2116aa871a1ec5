# Herald's front door. `make run` starts a dev server with the demo page at
# http://127.0.0.1:8080/; `make test` runs every test.

CARGO ?= cargo

.PHONY: run test lint build

run:
	$(CARGO) run --release -- serve --dev

build:
	$(CARGO) build --release

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
