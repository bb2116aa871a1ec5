# Herald's front door. `make run` starts a dev server with the demo page at
# http://127.0.0.1:8080/; `make test` runs every test.

CARGO ?= cargo

.PHONY: run test lint build bench cluster contract image

run:
	$(CARGO) run --release -- serve --dev

build:
	$(CARGO) build --release

# /openapi.json against the server, with Schemathesis (installed from PyPI if missing).
contract:
	./scripts/contract

# Redis, three nodes and an nginx load balancer on http://127.0.0.1:8080/ (see docs/cluster.md).
# REDIS=sentinel: a primary, two replicas and three sentinels instead of one Redis.
# REDIS=cluster: a Redis Cluster of three primaries and three replicas.
cluster:
	REDIS=$(or $(REDIS),single) ./scripts/cluster

# Debian packages the tests start (Chromium for the demo page, redis-server for the cluster
# tests), installed when missing so that `make test` is the whole set-up on a fresh machine.
TEST_PACKAGES = chromium chromium-driver redis-server

test:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  && command -v redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES))
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The OCI image localhost/herald (Containerfile), built FROM scratch with buildah (installed if
# missing) and tried by running its entrypoint from its filesystem under chroot, since
# containers cannot be started here; also written to target/image/ (see docs/image.md).
image:
	./scripts/image

# Herald against nginx + nchan, both pinned to core 0, the load generator on core 1; scenarios
# 8-13 run clusters on one redis-server (also on core 0; 13 adds a replica of it); 14 is SSE
# fan-out and idle memory over TLS (nginx with ssl, a throwaway certificate). Writes
# bench/RESULTS.md and bench/latency.svg. SCENARIO=1,3 runs only those.
bench:
	command -v nginx >/dev/null && test -f /usr/lib/nginx/modules/ngx_nchan_module.so \
	  && command -v redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan redis-server)
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench $(if $(SCENARIO),--scenario $(SCENARIO))
