# credvm — `make demo` sets up and runs the main job; `make test` runs the tests.
# Both work on a fresh Debian/Ubuntu machine: they install what they need.

GO        ?= go
CACHE     := $(CURDIR)/.cache
BIN       := $(CURDIR)/bin
TOOLS     := $(CACHE)/bin
IMAGES    := $(CACHE)/images
SOPS_VERSION := v3.13.3
export CREDVM_TOOLS := $(TOOLS)
export CREDVM_IMAGES := $(IMAGES)

.PHONY: all build demo test test-short deps tools images clean vet fuzz bench nix-vendor-hash

all: build

# Static (CGO_ENABLED=0): the same binary runs on the host and, for
# `credvm guest`, inside any guest.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/credvm ./cmd/credvm

deps:
	scripts/install-deps

# The real sops CLI, for interoperability tests (from the Go module proxy).
tools: $(TOOLS)/sops
$(TOOLS)/sops:
	GOBIN=$(TOOLS) $(GO) install github.com/getsops/sops/v3/cmd/sops@$(SOPS_VERSION)

# Guest images from Debian packages (credvm image: a kernel fetched with
# apt-get download, a debootstrapped systemd root packed as an initramfs,
# the user's guest initrd.img). Cached in .cache/images; debootstrap needs
# root, hence sudo for other users.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
images: deps build
	$(SUDO) $(BIN)/credvm image --dir $(IMAGES)

demo: deps build images
	$(BIN)/credvm demo --images $(IMAGES)

vet:
	$(GO) vet ./...
	$(GO) vet -tags faultinject ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

# Every test, including real guests under QEMU; nothing skips silently.
# The faultinject tag compiles in the fault points the crash tests kill
# credvm at (the product binary, `make build`, has none).
test: deps tools images vet
	CREDVM_TEST_STRICT=1 $(GO) test -tags faultinject -count=1 -timeout 40m ./...

# Unit and CLI tests only, no guests.
test-short:
	$(GO) test -tags faultinject -short ./...

clean:
	rm -rf $(BIN)

# flake.nix's buildGoModule pins the vendored modules' hash: after a
# go.mod change, this recomputes it (nix hash path over `go mod vendor`,
# which is what buildGoModule's vendor derivation hashes).
nix-vendor-hash:
	@d=$$(mktemp -d) && $(GO) mod vendor -o $$d/vendor && \
	  printf '"%s"\n' "$$(nix --extra-experimental-features nix-command hash path $$d/vendor)" > nix/vendor-hash.nix && \
	  rm -rf $$d && cat nix/vendor-hash.nix

# Coverage-guided fuzzing of the parsers and codecs, FUZZTIME each (their
# seed corpora, testdata/fuzz/, run in `make test` as ordinary tests).
FUZZTIME ?= 60s
FUZZ_TARGETS := internal/sops:FuzzDecrypt internal/spec:FuzzParseMachine \
	internal/guest:FuzzCredentialRoundTrip internal/guest:FuzzParseType11 \
	internal/cred:FuzzParseManifest internal/hypervisor/cloudhypervisor:FuzzArgvQuoting
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "==> $$fn ($(FUZZTIME))"; \
		$(GO) test ./$$pkg -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

# Benchmarks (bench/README.md): ratios against the baselines, from one run.
bench: deps build images
	@echo "==> start overhead and list at scale"
	CREDVM_IMAGES=$(IMAGES) $(GO) test ./bench -run '^$$' -bench 'Start|List' -benchtime 10x -timeout 30m
	@echo "==> generation throughput (100 machines x 3 generators)"
	CREDVM_IMAGES=$(IMAGES) $(GO) test ./bench -run '^$$' -bench 'Generate' -benchtime 1x -timeout 30m
	@echo "==> boot cost of credentials (systemd guest, TCG)"
	CREDVM_IMAGES=$(IMAGES) $(GO) test ./bench -run '^$$' -bench 'Boot' -benchtime 1x -timeout 30m
