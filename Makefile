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
test: fmt-check vet staticcheck
	$(GO) test -race -count=1 -timeout 10m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 10m $$($(GO) list $(PKGS) | grep -Ev '$(RACE_RE)')

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
	$(BUF) generate node/api/events/v1 --template '{"version":"v2","plugins":[{"local":["go","tool","protoc-gen-go"],"out":"node/api/events/v1","opt":"paths=source_relative"},{"local":["go","tool","protoc-gen-connect-go"],"out":"node/api/events/v1","opt":"paths=source_relative"}]}'

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

## bench: Go benchmarks, then the token endpoint against a bare net/http baseline
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./issuance/ ./raft/ ./loadtest/
	$(GO) run ./cmd/tally loadtest compare --concurrency $(BENCH_CONCURRENCY) --duration $(BENCH_DURATION)
	$(GO) test -run '^$$' -bench 'AuthCodeRedemption|RefreshRotation' -benchtime 2000x -count=1 ./node/

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

## cluster: a local 3-node cluster in two regions on 127.0.0.1:8081-8083 (deploy/local)
cluster:
	GO=$(GO) deploy/local/cluster.sh start

## cluster-stop: stop the local cluster (its state is kept; cluster.sh clean deletes it)
cluster-stop:
	deploy/local/cluster.sh stop

clean:
	rm -rf bin data
