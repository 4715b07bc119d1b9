# postgres-operator

# Image of the operator (manager, instance agent and backup subcommands in one binary).
IMG ?= postgres-operator:latest
CONTAINER_TOOL ?= docker

# Tool versions, pinned.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
KUSTOMIZE_VERSION ?= v5.8.1
K8S_VERSION ?= v1.37.1
ETCD_VERSION ?= v3.7.3
GOSEC_VERSION ?= v2.30.0
GOLANGCI_LINT_VERSION ?= v2.15.0
# promtool (the alert rules' checks and unit tests) comes from Prometheus's Go
# module, whose versions are v0.<minor>.<patch> for Prometheus 3.<minor>.
PROMTOOL_VERSION ?= v0.316.0
HELM_VERSION ?= v4.3.2
# kwok plays the nodes and pods of the scale benchmark (make bench-scale).
KWOK_VERSION ?= v0.8.0

LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
KUSTOMIZE ?= $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
GOSEC ?= $(LOCALBIN)/gosec-$(GOSEC_VERSION)
# Built once per version outside the repo (a ~3 minute build).
TOOLS_CACHE ?= $(HOME)/.cache/postgres-operator/tools
PROMTOOL ?= $(TOOLS_CACHE)/promtool-$(PROMTOOL_VERSION)/promtool
HELM ?= $(TOOLS_CACHE)/helm-$(HELM_VERSION)/helm
KWOK ?= $(TOOLS_CACHE)/kwok-$(KWOK_VERSION)/kwok
GOLANGCI_LINT ?= $(TOOLS_CACHE)/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint
KUBECTL ?= kubectl

# The race detector on every unit, envtest and PostgreSQL test (issue 23: one
# goroutine owns each piece of the agent's state; -race proves it).
GO_TEST_FLAGS ?= -count=1 -race

.PHONY: all
all: build

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from the markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## go fmt
	go fmt ./...

.PHONY: vet
vet: ## go vet (including the e2e build tag)
	go vet ./...
	go vet -tags e2e ./test/...

.PHONY: envtest-assets
envtest-assets: ## Build (once, cached outside the repo) etcd and kube-apiserver for envtest.
	@K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/k8s-binaries.sh etcd kube-apiserver >/dev/null

# gosec rules left out, by design: G204 (the agent runs PostgreSQL's programs
# with argument vectors, never through a shell), G304 (files are read at paths
# from flags and mounts), G101 (names of Secret keys and files, not
# credentials), G115 (conversions of counts, ports and sizes that are bounded),
# G104 (unchecked errors of Close on cleanup paths). Anything else fails.
GOSEC_EXCLUDE ?= G104,G101,G115,G204,G304

.PHONY: lint-security
lint-security: $(GOSEC) ## Static security analysis (gosec, pinned).
	$(GOSEC) -quiet -exclude=$(GOSEC_EXCLUDE) -exclude-dir=test -exclude-dir=hack ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## golangci-lint (pinned; .golangci.yml lists the linters and every exclusion).
	$(GOLANGCI_LINT) run ./...

.PHONY: test
test: manifests generate chart vet lint lint-security envtest-assets $(PROMTOOL) $(HELM) ## Unit, envtest and PostgreSQL tests.
	hack/ensure-postgres.sh
	PROMTOOL="$(PROMTOOL)" HELM="$(HELM)" GOLANGCI_LINT="$(GOLANGCI_LINT)" POSTGRES_ROOTFS="$$(hack/pg-rootfs.sh)" \
	KUBEBUILDER_ASSETS="$$(K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/k8s-binaries.sh etcd kube-apiserver)" \
		go test $(GO_TEST_FLAGS) ./...

.PHONY: check-generated
check-generated: manifests generate chart ## Fail if generated files are not committed.
	@git diff --exit-code -- api config dist/chart || (echo "generated files are stale: run make generate manifests" && exit 1)

##@ Build

.PHONY: build
build: ## Build the static binary (manager, instance agent).
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o bin/manager ./cmd

.PHONY: run
run: manifests generate ## Run the manager against the current kubeconfig.
	go run ./cmd manager --agent-image=$(IMG)

.PHONY: docker-build
docker-build: ## Build the operator image (needs a container engine).
	$(CONTAINER_TOOL) build -t $(IMG) .

.PHONY: docker-push
docker-push:
	$(CONTAINER_TOOL) push $(IMG)

##@ Deployment

.PHONY: install
install: manifests $(KUSTOMIZE) ## Install the CRDs into the current cluster.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) apply --server-side -f -

.PHONY: uninstall
uninstall: manifests $(KUSTOMIZE) ## Delete the CRDs, and with them every Database, Backup and Restore: needs CONFIRM=delete-all-databases.
	@[ "$(CONFIRM)" = delete-all-databases ] || { echo "uninstall deletes every Database, Backup and Restore of the cluster with the CRDs; run: make uninstall CONFIRM=delete-all-databases" >&2; exit 1; }
	$(KUSTOMIZE) build config/crd | $(KUBECTL) delete --ignore-not-found --wait=false -f -

.PHONY: deploy
deploy: manifests $(KUSTOMIZE) ## Deploy the operator with image IMG.
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default | $(KUBECTL) apply --server-side -f -

.PHONY: undeploy
undeploy: $(KUSTOMIZE) ## Remove the operator; the CRDs, Databases and their data stay (make uninstall removes the CRDs).
	$(KUSTOMIZE) build config/default | hack/without-crds.sh | $(KUBECTL) delete --ignore-not-found --wait=false -f -

.PHONY: build-installer
build-installer: manifests generate $(KUSTOMIZE) ## Write dist/install.yaml (CRDs, RBAC, the manager) for image IMG.
	mkdir -p dist
	cd config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build config/default > dist/install.yaml
	git checkout -q -- config/manager/kustomization.yaml 2>/dev/null || true

##@ Local cluster and end-to-end tests

.PHONY: cluster-up
cluster-up: ## Start the local single-node cluster (builds and caches everything it needs).
	hack/localkube.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and undo every host change it made.
	hack/localkube.sh down

.PHONY: plugin
plugin: ## Build the kubectl plugin into bin/kubectl-pg (put bin/ on PATH: kubectl pg --help).
	go build -trimpath -ldflags="-s -w" -o bin/kubectl-pg ./cmd/kubectl-pg

.PHONY: kubeconfig
kubeconfig: ## Print the path of the local cluster's kubeconfig.
	@hack/localkube.sh kubeconfig

.PHONY: demo
demo: ## Quick start: cluster, operator, a Ready sample Database and how to connect.
	hack/demo.sh

.PHONY: e2e
e2e: $(HELM) ## End-to-end suite on the local cluster (brings it up and deploys the operator).
	hack/localkube.sh up
	KUBECONFIG="$$(hack/localkube.sh kubeconfig)" hack/deploy-local.sh
	HELM="$(HELM)" KUBECONFIG="$$(hack/localkube.sh kubeconfig)" CHAOS_SEED=$${CHAOS_SEED:-1} CHAOS_DURATION=$${CHAOS_DURATION:-60s} \
		CHAOS_REPORT_DIR="$(CURDIR)/bin/chaos" go test -tags e2e -count=1 -timeout 75m -v ./test/e2e/...

.PHONY: bench-backup
bench-backup: build ## Backup/restore vs pg_dump -Z0 / pg_restore ceilings, parallel restore, pod peak memory; realistic (~3:1) and pgbench data, medians of RUNS=3.
	hack/ensure-postgres.sh >/dev/null
	go run ./hack/tools/bench-backup -manager bin/manager -rows $${ROWS:-600000} -scale $${SCALE:-30} -runs $${RUNS:-3}

.PHONY: bench-upgrade
bench-upgrade: ## Downtime of a ~1 GiB major upgrade (15 → 17) with --link and --copy vs restart, cp -al and cp -a ceilings, medians of RUNS=3.
	POSTGRES_ROOTFS="$$(hack/pg-rootfs.sh)" UPGRADE_BENCH=1 RUNS=$(or $(RUNS),3) \
		go test -count=1 -timeout 90m -run TestBenchUpgrade -v ./internal/upgrade/

.PHONY: bench-scale
bench-scale: $(KWOK) ## N=1000 Databases on kwok's fake nodes: convergence, API requests, steady-state writes, image change, restart, memory (ARGS for more flags).
	go run ./hack/tools/bench-scale -n $${N:-1000} -steady $${STEADY:-10m} -unrelated $${UNRELATED:-10000} \
		-k8s-bin "$$(K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/k8s-binaries.sh etcd kube-apiserver kube-controller-manager kube-scheduler)" \
		-kwok $(KWOK) $(ARGS)

# CloudNativePG side by side (not in make check): its source is not on the Go
# module proxy; clone it (e.g. v1.30.0) and pass CNPG_SRC. Its manager is built
# from that source with modules from the proxy.
.PHONY: bench-scale-peer
bench-scale-peer: $(KWOK) ## N=200 of ours and of CloudNativePG's Clusters, agents unreachable, side by side (CNPG_SRC=path of its source).
	@test -n "$(CNPG_SRC)" || (echo "CNPG_SRC=<path of a cloudnative-pg source tree> is required" && exit 1)
	cd $(CNPG_SRC) && CGO_ENABLED=0 go build -o $(TOOLS_CACHE)/cnpg-manager ./cmd/manager
	go run ./hack/tools/bench-scale -n $${N:-200} -steady $${STEADY:-2m} \
		-k8s-bin "$$(K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/k8s-binaries.sh etcd kube-apiserver kube-controller-manager kube-scheduler)" \
		-kwok $(KWOK) -cnpg-manager $(TOOLS_CACHE)/cnpg-manager -cnpg-crds $(CNPG_SRC)/config/crd/bases $(ARGS)

.PHONY: bench-failover
bench-failover: ## Write gap and lost rows per fault class (graceful delete, postmaster/agent SIGKILL, forced deletion, partition, switchover) under load (TRIALS=5 MODE=async|sync|both), on the local cluster.
	hack/localkube.sh up
	KUBECONFIG="$$(hack/localkube.sh kubeconfig)" hack/deploy-local.sh
	KUBECONFIG="$$(hack/localkube.sh kubeconfig)" BENCH_FAILOVER_TRIALS=$${TRIALS:-5} BENCH_FAILOVER_MODE=$${MODE:-both} go test -tags e2e -count=1 -timeout 180m -run TestBenchFailover -v ./test/e2e/

.PHONY: chaos
chaos: ## Seeded nemesis against a 3-instance Database with append and bank checkers (SEED=1 DURATION=10m MODE=async|sync|both FAULTS=class,…); report in bin/chaos.
	hack/localkube.sh up
	KUBECONFIG="$$(hack/localkube.sh kubeconfig)" hack/deploy-local.sh
	KUBECONFIG="$$(hack/localkube.sh kubeconfig)" CHAOS_SEED=$${SEED:-1} CHAOS_DURATION=$${DURATION:-10m} CHAOS_MODE=$${MODE:-both} CHAOS_FAULTS=$${FAULTS:-} \
		CHAOS_REPORT_DIR="$(CURDIR)/bin/chaos" go test -tags e2e -count=1 -timeout 600m -run TestChaos -v ./test/e2e/

.PHONY: test-scale
test-scale: $(KWOK) ## The reduced scale benchmark: 50 Databases on kwok's fake nodes converge, then no write at steady state or after a restart.
	SCALE_K8S_BIN="$$(K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/k8s-binaries.sh etcd kube-apiserver kube-controller-manager kube-scheduler)" \
	KWOK="$(KWOK)" go test -tags scale -count=1 -timeout 20m -v ./test/scale/

.PHONY: check
check: check-generated test test-scale e2e ## Everything CI runs: generated files committed, unit, envtest and PostgreSQL tests, the reduced scale benchmark, then the e2e suite.

##@ Tools

$(CONTROLLER_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $@

$(GOSEC):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install github.com/securego/gosec/v2/cmd/gosec@$(GOSEC_VERSION)
	mv $(LOCALBIN)/gosec $@

$(GOLANGCI_LINT):
	@mkdir -p $(dir $@)
	GOBIN=$(dir $@) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

$(HELM):
	@mkdir -p $(dir $@)
	GOBIN=$(dir $@) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

.PHONY: chart
chart: manifests ## Refresh the Helm chart's copies of the CRDs, RBAC rules and monitoring files (dist/chart/files).
	hack/chart-files.sh

# kwok and the stage files it runs with (nodes Ready with heartbeats, pods
# Ready at once, Job pods complete, deleted pods go), from its module.
$(KWOK):
	@mkdir -p $(dir $@)stages
	GOBIN=$(dir $@) go install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	d=$$(go mod download -json sigs.k8s.io/kwok@$(KWOK_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	for f in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do \
		cp "$$d/kustomize/stage/$$f.yaml" $(dir $@)stages/; done

$(PROMTOOL):
	@mkdir -p $(dir $@)
	GOBIN=$(dir $@) go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

.PHONY: test-rules
test-rules: $(PROMTOOL) ## promtool check and unit tests of the alert rules (config/prometheus).
	PROMTOOL="$(PROMTOOL)" go test -count=1 -run 'TestAlertRules|TestEveryAlert|TestDashboard' -v ./internal/metrics/

$(KUSTOMIZE):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	mv $(LOCALBIN)/kustomize $@

.PHONY: help
help:
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
