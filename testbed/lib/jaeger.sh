# shellcheck shell=bash
# Jaeger v2, the testbed's trace backend: a host process in node 1's network namespace, like the
# control plane (not a pod: the API server's exporter needs it before any pod can run, and a test
# that deletes pods, drains a node or applies a NetworkPolicy must not lose the traces it then reads).
# Sourced by `up` and `testbed/jaeger` after lib/common.sh.
#
# Addresses, the same from every pod (pods reach 10.200.0.1 as they reach the API server's
# endpoint), from node 1's network namespace (the tests') and from the API server:
#   OTLP/gRPC  10.200.0.1:4317   (the API server: 127.0.0.1:4317)
#   OTLP/HTTP  http://10.200.0.1:4318   (the product's OTEL_EXPORTER_OTLP_ENDPOINT)
#   query API  http://10.200.0.1:16686  (/api/traces?service=..., /api/traces/<id>, /api/v3/...)
# Storage is in memory (the newest JAEGER_MAX_TRACES traces); stopping Jaeger forgets them.
# Its pid and command are in $RUN/pids/jaeger and $RUN/cmd/jaeger, so `down` stops it.

JAEGER_OTLP_GRPC="$API_IP:4317"
JAEGER_OTLP_HTTP="http://$API_IP:4318"
JAEGER_QUERY="http://$API_IP:16686"
JAEGER_HEALTH="http://127.0.0.1:13133/status"
JAEGER_DIR="$RUN/jaeger"
JAEGER_MAX_TRACES="${JAEGER_MAX_TRACES:-50000}"
APISERVER_TRACING_CONFIG="$STATE/tracing/apiserver-tracing.yaml"

# The API server's tracing: OTLP/gRPC to Jaeger, every request sampled (a caller's traceparent is
# honoured: the sampler is ParentBased), so a webhook call continues the API server's trace.
write_apiserver_tracing_config() { # [path]
  local f=${1:-$APISERVER_TRACING_CONFIG}
  mkdir -p "$(dirname "$f")"
  cat >"$f" <<EOF2
apiVersion: apiserver.config.k8s.io/v1
kind: TracingConfiguration
endpoint: 127.0.0.1:4317
samplingRatePerMillion: 1000000
EOF2
}

write_jaeger_config() { # path
  cat >"$1" <<EOF2
# pgd-testbed: Jaeger v2 all-in-one, in-memory, OTLP in, query API out (no UI assets are built in).
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource: {service.name: jaeger}
    metrics: {level: none}
    logs: {level: info}
extensions:
  healthcheckv2:
    use_v2: true
    http: {endpoint: "127.0.0.1:13133"}
  jaeger_storage:
    backends:
      memstore:
        memory: {max_traces: $JAEGER_MAX_TRACES}
  jaeger_query:
    storage: {traces: memstore}
    http: {endpoint: "0.0.0.0:16686"}
    grpc: {endpoint: "127.0.0.1:16685"}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "0.0.0.0:4317"}
      http: {endpoint: "0.0.0.0:4318"}
processors:
  batch: {timeout: 200ms}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF2
}

jaeger_pid() { # prints the pid when the recorded Jaeger still runs
  local pid
  pid=$(cat "$RUN/pids/jaeger" 2>/dev/null) || return 1
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$JAEGER_BIN/jaeger" || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  echo "$pid"
}

# Ready: every component (receivers, pipeline, query) reports healthy, and the query API answers.
jaeger_ready() {
  in_node 1 curl -sf --max-time 2 "$JAEGER_HEALTH" | grep -q '"healthy":true' &&
    in_node 1 curl -sf --max-time 2 "$JAEGER_QUERY/api/services" >/dev/null
}

# Starts Jaeger in node 1's network namespace (nothing when it runs) and waits until its query API
# answers. Needs the network namespace, not the cluster: `up` starts it before the API server.
jaeger_start() {
  [ -x "$JAEGER_BIN/jaeger" ] || die "Jaeger $JAEGER_VERSION is not in the cache: run testbed/build jaeger"
  [ -e "/run/netns/$(node_netns 1)" ] || die "the testbed is not up (no network namespace $(node_netns 1)): run testbed/up"
  if jaeger_pid >/dev/null; then say "jaeger: already running (pid $(jaeger_pid))"; return 0; fi
  mkdir -p "$JAEGER_DIR" "$RUN/pids" "$RUN/cmd" "$LOGS"
  write_jaeger_config "$JAEGER_DIR/config.yaml"
  local cmd=("$JAEGER_BIN/jaeger" --config "file:$JAEGER_DIR/config.yaml")
  printf '%q ' "${cmd[@]}" >"$RUN/cmd/jaeger"
  : >"$LOGS/jaeger.log"
  ( exec 9>&-; cd / && exec nsenter --net="/run/netns/$(node_netns 1)" -- setsid "${cmd[@]}" </dev/null >>"$LOGS/jaeger.log" 2>&1 ) &
  echo $! >"$RUN/pids/jaeger"
  local deadline=$(( $(ms) + 30000 ))
  until jaeger_ready; do
    if ! jaeger_pid >/dev/null; then
      printf 'testbed: jaeger exited during start-up; last lines of %s:\n' "$LOGS/jaeger.log" >&2
      tail -n 20 "$LOGS/jaeger.log" >&2; rm -f "$RUN/pids/jaeger"; return 1
    fi
    if [ "$(ms)" -gt "$deadline" ]; then
      printf 'testbed: jaeger not ready after 30 s; last lines of %s:\n' "$LOGS/jaeger.log" >&2
      tail -n 20 "$LOGS/jaeger.log" >&2; return 1
    fi
    sleep 0.2
  done
  say "jaeger: ready (pid $(jaeger_pid)), query API $JAEGER_QUERY, OTLP/HTTP $JAEGER_OTLP_HTTP, OTLP/gRPC $JAEGER_OTLP_GRPC"
}

jaeger_stop() {
  local pid k
  if ! pid=$(jaeger_pid); then rm -f "$RUN/pids/jaeger"; say "jaeger: not running"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for ((k = 0; k < 100; k++)); do jaeger_pid >/dev/null || break; sleep 0.1; done
  jaeger_pid >/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$RUN/pids/jaeger"
  say "jaeger: stopped (pid $pid)"
}
