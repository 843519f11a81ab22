# shellcheck shell=bash
# Generators for the per-node configuration files. Sourced by `up` after lib/common.sh.
# Each takes the node index and writes into that node's state directory.

write_containerd_config() { # node
  local s r; s=$(node_state "$1"); r=$(node_run "$1")
  cat >"$s/containerd.toml" <<EOF2
version = 2
root  = "$s/containerd"
state = "$r/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$r/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$s/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/testbed/pause:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  # These machines lack CAP_SYS_RESOURCE: the negative oom_score_adj CRI asks for is refused and
  # every pod sandbox fails ("can't get final child's PID from pipe: EOF") unless containerd clamps it.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        Root = "$r/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir  = "/usr/lib/cni"
    conf_dir = "$s/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF2
}

write_cni_config() { # node
  local s; s=$(node_state "$1"); mkdir -p "$s/cni/net.d"
  cat >"$s/cni/net.d/10-pgd.conflist" <<EOF2
{ "cniVersion": "1.0.0", "name": "pgd",
  "plugins": [ { "type": "ptp", "ipMasq": false, "mtu": 1500,
                 "ipam": { "type": "host-local", "dataDir": "$s/cni/ipam",
                           "ranges": [[{ "subnet": "$(node_pod_cidr "$1")", "gateway": "$(node_pod_gw "$1")" }]],
                           "routes": [{ "dst": "0.0.0.0/0" }] } } ] }
EOF2
}

write_kubelet_config() { # node
  local s p="$STATE/pki"; s=$(node_state "$1")
  cat >"$s/kubelet.yaml" <<EOF2
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false              # 1.35 refuses cgroup v1 unless told otherwise
cgroupDriver: cgroupfs
cgroupRoot: /$(node_cgroup "$1")
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
containerRuntimeEndpoint: unix://$(node_sock "$1")
runtimeRequestTimeout: 2m
address: $(node_ip "$1")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $p/kubelet-$(node_name "$1")-serving.crt
tlsPrivateKeyFile: $p/kubelet-$(node_name "$1")-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 0s}
  x509: {clientCAFile: $p/ca.crt}
authorization:
  mode: Webhook
  webhook: {cacheAuthorizedTTL: 0s, cacheUnauthorizedTTL: 0s}
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
failSwapOn: true
serializeImagePulls: true
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 80
evictionHard: {memory.available: "100Mi", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
podLogsDir: $s/pod-logs
resolvConf: $STATE/resolv.conf   # no DNS server exists in the testbed network
clusterDomain: cluster.local
maxPods: 110
protectKernelDefaults: false
localStorageCapacityIsolation: true
nodeStatusReportFrequency: 10s
logging: {verbosity: 1}
EOF2
}

write_proxy_config() { # node
  local s; s=$(node_state "$1")
  cat >"$s/kube-proxy.yaml" <<EOF2
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kubeconfig/proxy.kubeconfig}
hostnameOverride: $(node_name "$1")
mode: iptables
clusterCIDR: $CLUSTER_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {minSyncPeriod: 1s, syncPeriod: 30s}
# nf_conntrack_max cannot be set from inside a network namespace ("Invalid argument").
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF2
}
