# shellcheck shell=bash
# Settings and helpers shared by every testbed script. Sourced, never run.
#
# Versions are pinned here and nowhere else; the build cache is keyed by them, so bumping one
# rebuilds only that component.

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"     # 1.35 is the last line that runs on cgroup v1 + containerd 1.x
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"     # only the scale benchmark (loadtest) uses it
# NetworkPolicy agent (`build netpol`, optional): kube-router in firewall-only mode (iptables + ipset).
# Not kube-network-policies: it needs the nftables `queue` expression (CONFIG_NFT_QUEUE), which this
# kernel lacks ("Could not process rule: No such file or directory"), so it would enforce nothing.
# v2.1.0 is the newest kube-router the Go module proxy serves (later tags answer 403).
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
NETPOL_PACKAGES=(ipset)
# Prometheus + promtool (`build prometheus`, optional): scrapes the product's replicas through Kubernetes
# service discovery (`testbed/prometheus`), and promtool unit-tests alert rules. Module v0.316.0 is
# Prometheus 3.16.0.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
DEBIAN_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2 openssl curl util-linux kmod file fonts-dejavu-core)

TESTBED_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$TESTBED_DIR/.." && pwd)"
CACHE="${PGD_CACHE:-$HOME/.cache/pod-graceful-drain}"
KUBE_BIN="$CACHE/k8s/$KUBE_VERSION/bin"
ETCD_BIN="$CACHE/etcd/$ETCD_VERSION/bin"
HELM_BIN="$CACHE/helm/$HELM_VERSION/bin"
KWOK_BIN="$CACHE/kwok/$KWOK_VERSION/bin"
NETPOL_BIN="$CACHE/kube-router/$KUBE_ROUTER_VERSION/bin"
PROMETHEUS_BIN="$CACHE/prometheus/$PROMETHEUS_VERSION/bin"
# Trace backend (`build jaeger`, optional): Jaeger v2 (an OpenTelemetry Collector distribution) with
# in-memory storage, run by `up` (and `testbed/jaeger`) in node 1's network; `up` points the API server's tracing at it.
JAEGER_VERSION="${JAEGER_VERSION:-v1.76.0}"
JAEGER_BIN="$CACHE/jaeger/$JAEGER_VERSION/bin"
# Go's caches live beside the binaries so that one directory holds (and `du` measures) all of it.
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOPATH="$CACHE/go/path"
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
export PATH="/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

# Runtime layout. Everything the cluster writes lives under these paths (plus the few paths the
# kubelet and containerd hard-code, which `down` cleans) so that `down` can prove nothing is left.
STATE=/var/lib/pgd-testbed        # persistent across down/up: PKI, images, containerd content
RUN=/run/pgd-testbed              # per-run: pid files, sockets, node count
LOGS=/var/log/pgd-testbed         # one log per component
ETCD_DATA=/dev/shm/pgd-testbed-etcd
KUBECONFIG_ADMIN="$STATE/kubeconfig/admin.kubeconfig"
LOCK="${PGD_TESTBED_LOCK:-/var/lib/pgd-testbed.lock}"   # outside /run: survives down

SVC_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.244.0.0/16
API_IP=10.200.0.1
MAX_NODES=4
# Hard-coded paths of kubelet/containerd/libcni, made private (tmpfs) in each node's mount namespace.
NODE_PRIVATE_DIRS=(/var/lib/kubelet /var/log/containers /run/containerd /var/lib/cni /run/netns)
CG_CONTROLLERS="cpu cpuacct cpuset memory pids systemd blkio devices freezer"

# Node i (1-based): name, network namespace, node IP, pod CIDR. Node 1 also runs the control plane.
node_name() { echo "pgd-node-$1"; }
node_netns() { echo "pgd-n$1"; }
node_ip() { echo "10.200.0.$1"; }
node_pod_cidr() { echo "10.244.$(( $1 - 1 )).0/24"; }
node_pod_gw() { echo "10.244.$(( $1 - 1 )).1"; }
node_state() { echo "$STATE/nodes/$1"; }
node_run() { echo "$RUN/nodes/$1"; }
node_sock() { echo "$(node_run "$1")/containerd.sock"; }
node_mntns() { echo "$(node_run "$1")/ns/mnt"; }
node_cgroup() { echo "pgd-n$1"; }

ms() { date +%s%3N; }
# Run in node i's network namespace (never `ip netns exec`: it remounts /sys and hides the cgroups).
in_node() { local i=$1; shift; nsenter --net="/run/netns/$(node_netns "$i")" -- "$@"; }
kctl() { in_node 1 "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" 2>/dev/null || true; }
die() { printf 'testbed: %s\n' "$*" >&2; exit 1; }

# Run a long command, printing a heartbeat with the elapsed time every 20 s so a cold build never
# looks hung. Output of the command goes to a log; its tail is shown if it fails.
with_progress() { # label logfile cmd...
  local label=$1 log=$2; shift 2
  local t0; t0=$(date +%s)
  say "$label: started"
  ( "$@" ) >"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && say "$label: still running, $(( $(date +%s) - t0 )) s"
  done
  if wait "$pid"; then
    say "$label: done in $(( $(date +%s) - t0 )) s"
  else
    printf 'testbed: %s failed after %s s. Last lines of %s:\n' "$label" "$(( $(date +%s) - t0 ))" "$log" >&2
    tail -n 25 "$log" >&2
    return 1
  fi
}
