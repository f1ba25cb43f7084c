SHELL := /bin/bash
# tally — the two commands a new user needs are `make run` and `make test`.

GO        ?= go
PKGS      := ./...
# Packages whose concurrency the race detector must see on every run.
RACE_PKGS := ./raft/... ./node/... ./replication/... ./issuance/... ./revocation/... ./loadtest/...
RACE_RE   := /(raft|node|replication|issuance|revocation|loadtest)(/|$$)
BUF       := $(GO) tool -modfile=.ci/buf.mod buf
FUZZTIME  ?= 30s
BENCH_DURATION ?= 10s
BENCH_CONCURRENCY ?= 32

.PHONY: cluster cluster-stop run test lint vet staticcheck fmt-check generate check-generate bench fuzz build clean

## run: a complete single node on 127.0.0.1:8080 with embedded NATS and ./data
run: build
	./bin/tally serve --dev

## build: the tally binary in ./bin
build:
	$(GO) build -o bin/tally ./cmd/tally

## test: vet, staticcheck, the race detector on the concurrent packages, all tests
## (-timeout bounds a hung package, it is no speed target: under the race
## detector on two loaded cores ./node alone took 18-20 minutes; ~3 quiet)
test: fmt-check vet staticcheck
	$(GO) test -race -count=1 -timeout 60m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 30m $$($(GO) list $(PKGS) | grep -Ev '$(RACE_RE)')

lint: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) tool staticcheck $(PKGS)

## generate: protobuf and Connect code, from tools pinned with `go tool`
generate:
	$(BUF) generate raft/raftpb --template '{"version":"v2","plugins":[{"local":["go","tool","protoc-gen-go"],"out":"raft/raftpb","opt":"paths=source_relative"}]}'
	$(BUF) generate node/api/admin/v1 --template '{"version":"v2","plugins":[{"local":["go","tool","protoc-gen-go"],"out":"node/api/admin/v1","opt":"paths=source_relative"},{"local":["go","tool","protoc-gen-connect-go"],"out":"node/api/admin/v1","opt":"paths=source_relative"}]}'
	$(BUF) generate node/api/cluster/v1 --template '{"version":"v2","plugins":[{"local":["go","tool","protoc-gen-go"],"out":"node/api/cluster/v1","opt":"paths=source_relative"},{"local":["go","tool","protoc-gen-connect-go"],"out":"node/api/cluster/v1","opt":"paths=source_relative"}]}'
	$(BUF) generate revocation/eventwire/eventsv1 --template '{"version":"v2","plugins":[{"local":["go","tool","protoc-gen-go"],"out":"revocation/eventwire/eventsv1","opt":"paths=source_relative"},{"local":["go","tool","protoc-gen-connect-go"],"out":"revocation/eventwire/eventsv1","opt":"paths=source_relative"}]}'

## check-generate: fails if regenerating changes any generated file
GENERATED = $$(git ls-files -co --exclude-standard '*.pb.go' '*.connect.go')
check-generate:
	@before=$$(sha256sum $(GENERATED)); \
	$(MAKE) --no-print-directory generate; \
	after=$$(sha256sum $(GENERATED)); \
	if [ "$$before" != "$$after" ]; then \
	  echo "generated code is stale: run make generate and commit the result"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; \
	fi

## proto-check: buf lint, and buf breaking against the last release in .ci/releases
.PHONY: proto-check upgrade-test
proto-check:
	BUF="$(BUF)" .ci/proto-check

## upgrade-test: the last release (.ci/releases) and this tree in one cluster of real processes,
## upgraded and downgraded node by node under load (cmd/tally TestRollingUpgrade)
upgrade-test:
	TALLY_UPGRADE_TEST=1 $(GO) test -count=1 -timeout 20m -run '^TestRollingUpgrade$$' -v ./cmd/tally/

## bench: Go benchmarks, then the token endpoint against a bare net/http baseline
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./issuance/ ./raft/ ./loadtest/
	$(GO) run ./cmd/tally loadtest compare --concurrency $(BENCH_CONCURRENCY) --duration $(BENCH_DURATION)
	$(GO) test -run '^$$' -bench 'AuthCodeRedemption|RefreshRotation' -benchtime 2000x -count=1 ./node/
	$(MAKE) --no-print-directory bench-writes

## bench-writes: the write path of a 3-node cluster in one run (issue 14): the raw commit rate of its Raft log
## beside refresh rotation, code redemption and RFC 7009 revocation through followers, each with its ratio
.PHONY: bench-writes sweep-bench
bench-writes:
	TALLY_FIGURES=1 $(GO) test -count=1 -run '^TestWritePathFigures$$' -v -timeout 15m ./node/

## profile-writes: bench-writes (rows PROFILE_ROWS, default refresh) with a CPU profile in PROFILE_DIR (outside
## the tree; never commit profiles), then `go tool pprof` summaries: the CPU by node (pprof label node=nodeN;
## unlabelled is the load generator and the test), and the top functions of the leader and of a follower
PROFILE_DIR  ?= /tmp/tally-profile-writes
PROFILE_ROWS ?= refresh
PROFILE_TOP  ?= 30
.PHONY: profile-writes
profile-writes:
	@mkdir -p $(PROFILE_DIR)
	TALLY_FIGURES=1 TALLY_FIGURES_ROWS=$(PROFILE_ROWS) $(GO) test -count=1 -run '^TestWritePathFigures$$' -v -timeout 15m \
		-o $(PROFILE_DIR)/node.test -cpuprofile $(PROFILE_DIR)/cpu.pprof ./node/ | tee $(PROFILE_DIR)/figures.txt
	@leader=$$(sed -n 's/.*leader: node\([0-9]\).*/\1/p' $(PROFILE_DIR)/figures.txt | head -1); \
	follower=$$(( (leader + 1) % 3 )); \
	echo; echo "== CPU by node (leader node$$leader; unlabelled: load generator and test)"; \
	$(GO) tool pprof -tags -tagfocus 'node=.' $(PROFILE_DIR)/node.test $(PROFILE_DIR)/cpu.pprof 2>/dev/null | sed -n '/node:/,/^ *$$/p'; \
	$(GO) tool pprof -top -nodecount=1 $(PROFILE_DIR)/node.test $(PROFILE_DIR)/cpu.pprof 2>/dev/null | grep -m1 'Total samples'; \
	for who in "leader node$$leader" "follower node$$follower"; do \
		set -- $$who; echo; echo "== $$1 ($$2): top $(PROFILE_TOP) by cumulative, then by flat"; \
		$(GO) tool pprof -top -cum -nodecount=$(PROFILE_TOP) -tagfocus node=$$2 $(PROFILE_DIR)/node.test $(PROFILE_DIR)/cpu.pprof 2>/dev/null | tail -n +5; \
		$(GO) tool pprof -top -nodecount=$(PROFILE_TOP) -tagfocus node=$$2 $(PROFILE_DIR)/node.test $(PROFILE_DIR)/cpu.pprof 2>/dev/null | tail -n +5; \
	done; \
	echo; echo "profile: $(PROFILE_DIR)/cpu.pprof (binary $(PROFILE_DIR)/node.test); e.g. go tool pprof -http=: -tagfocus node=node$$leader $(PROFILE_DIR)/node.test $(PROFILE_DIR)/cpu.pprof"

## sweep-bench: apply latency while sweeping 1,000,000 live families, used codes and device codes
## (TALLY_SWEEP_RECORDS to change), unbounded beside bounded sweeps (issue 14; not part of make test)
sweep-bench:
	TALLY_FIGURES=1 $(GO) test -count=1 -run '^TestSweepFigures$$' -v -timeout 60m ./raft/

## fuzz: every fuzz target in the repository (found by go test -list), each for FUZZTIME (default 30s)
fuzz:
	@failed=""; \
	for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  list=$$($(GO) test -list '^Fuzz' $$dir/) || { echo "$$list"; failed="$$failed $$dir/"; continue; }; \
	  for target in $$(echo "$$list" | grep '^Fuzz'); do \
	    echo "== $$target $$dir/"; \
	    $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$dir/ || failed="$$failed $$target($$dir/)"; \
	  done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets failed:$$failed"; exit 1; fi

## soak: the fault-injection and linearizability tests with more rounds (TALLY_SOAK=1), SOAK_COUNT times
SOAK_COUNT ?= 5
.PHONY: soak
soak:
	TALLY_SOAK=1 $(GO) test -race -count=$(SOAK_COUNT) -timeout 60m -run 'Fault|Linearizab' ./raft/ ./node/

## cluster: a local 3-node cluster in two regions on 127.0.0.1:8081-8083 behind the one-issuer front door on 127.0.0.1:8080 (deploy/local)
cluster:
	GO=$(GO) deploy/local/cluster.sh start

## cluster-stop: stop the local cluster (its state is kept; cluster.sh clean deletes it)
cluster-stop:
	deploy/local/cluster.sh stop

clean:
	rm -rf bin data

## k8s-check: render deploy/kubernetes (kustomize as a library), decode every object strictly into the
## k8s.io/api types, check the deployment's invariants and run tally serve --check-config per pod (offline)
.PHONY: k8s-check
k8s-check:
	@d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(GO) build -o "$$d/tally" ./cmd/tally && \
	cd deploy/kubernetes/check && $(GO) run . -dir .. -tally "$$d/tally" && \
	TALLY_BIN="$$d/tally" $(GO) test -count=1 .

## systemd-check: systemd-analyze verify + security score of deploy/systemd/tally.service, and the
## example settings through tally serve --check-config (skips without systemd-analyze)
.PHONY: systemd-check
systemd-check:
	GO=$(GO) deploy/systemd/check.sh

## alerts-check: promtool check rules + promtool test rules on deploy/observability/prometheus
## (Debian: apt-get install prometheus for promtool); node's TestDashboardAndAlertMetricsExist checks the names
.PHONY: alerts-check
alerts-check:
	@command -v promtool >/dev/null || { echo "alerts-check: promtool not found (apt-get install -y --no-install-recommends prometheus)"; exit 1; }
	promtool check rules deploy/observability/prometheus/alerts.yml
	cd deploy/observability/prometheus && promtool test rules alerts_test.yml

## image: the container images from static binaries (FROM scratch; no registry needed)
IMAGE        ?= tally:local
DOCKER_CTX   := bin/docker
STATIC_BUILD := CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags '-s -w -X main.version=$(shell git describe --always --dirty 2>/dev/null || echo dev)'
.PHONY: image compose-up compose-down e2e
image:
	@echo "building the static binaries and the images (tally:local, tally-orders-api:local, tally-wanlink:local)" >&2
	@rm -rf $(DOCKER_CTX) && mkdir -p $(DOCKER_CTX)/data
	@$(STATIC_BUILD) -o bin/tally-linux ./cmd/tally
	@$(STATIC_BUILD) -o $(DOCKER_CTX)/orders-api ./deploy/examples/orders-api
	@$(STATIC_BUILD) -o $(DOCKER_CTX)/wanlink ./deploy/compose/wanlink
	@cp bin/tally-linux $(DOCKER_CTX)/tally
	@docker build -q -f deploy/docker/Dockerfile -t $(IMAGE) $(DOCKER_CTX) >&2
	@docker build -q -f deploy/examples/orders-api/Dockerfile -t tally-orders-api:local $(DOCKER_CTX) >&2
	@docker build -q -f deploy/compose/wanlink/Dockerfile -t tally-wanlink:local $(DOCKER_CTX) >&2
	@docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(tally|tally-orders-api|tally-wanlink):local ' >&2

## compose-up: a three-region cluster in Docker (deploy/compose); prints the exports
compose-up: image
	@TALLY_IMAGE=$(IMAGE) deploy/compose/cluster.sh up

## compose-down: remove the compose cluster's containers, networks and volumes
compose-down:
	@deploy/compose/cluster.sh down

## e2e: the compose cluster checked as a user would (needs Docker), then torn down
e2e: image
	@$(GO) build -o bin/rscheck ./deploy/compose/rscheck
	@TALLY_IMAGE=$(IMAGE) deploy/compose/e2e.sh
