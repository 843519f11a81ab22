# shellcheck shell=bash
# Local PKI (openssl, ECDSA P-256) and kubeconfigs. Sourced by `up` after lib/common.sh.
# Idempotent: the CA and control-plane certificates are made once and kept across down/up (so a
# kubeconfig a person exported stays valid); each node's certificates are made when first needed.

pki_sign() { # dir name CN O extensions
  local d=$1 n=$2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$3${4:+/O=$4}" \
    -keyout "$d/$n.key" -out "$d/$n.csr" 2>/dev/null
  openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -out "$d/$n.crt" -extfile <(printf '%b' "$5") 2>/dev/null
  rm -f "$d/$n.csr"; chmod 600 "$d/$n.key"
}

pki_kubeconfig() { # name (cert/key name) -> $STATE/kubeconfig/<name>.kubeconfig
  local p="$STATE/pki" f="$STATE/kubeconfig/$1.kubeconfig"
  [ -f "$f" ] && return 0
  cat >"$f.tmp" <<EOF2
apiVersion: v1
kind: Config
clusters:
- name: pgd-testbed
  cluster: {server: "https://$API_IP:6443", certificate-authority-data: $(base64 -w0 <"$p/ca.crt")}
users:
- name: $1
  user: {client-certificate-data: $(base64 -w0 <"$p/$1.crt"), client-key-data: $(base64 -w0 <"$p/$1.key")}
contexts:
- name: pgd-testbed
  context: {cluster: pgd-testbed, user: $1}
current-context: pgd-testbed
EOF2
  chmod 600 "$f.tmp"; mv "$f.tmp" "$f"
}

pki_ensure() { # nodes
  local p="$STATE/pki" cli="keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth" i n
  mkdir -p "$p" "$STATE/kubeconfig"
  if [ ! -f "$p/sa.pub" ]; then
    rm -f "$p"/* "$STATE"/kubeconfig/*
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=pgd-testbed-ca" -keyout "$p/ca.key" -out "$p/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    pki_sign "$p" apiserver kube-apiserver "" "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,IP:$API_IP"
    pki_sign "$p" apiserver-kubelet-client kube-apiserver-kubelet-client "" "$cli"
    pki_sign "$p" admin kubernetes-admin system:masters "$cli"
    pki_sign "$p" kcm system:kube-controller-manager "" "$cli"
    pki_sign "$p" sched system:kube-scheduler "" "$cli"
    pki_sign "$p" proxy system:kube-proxy "" "$cli"
    openssl ecparam -name prime256v1 -genkey -noout -out "$p/sa.key.tmp" 2>/dev/null
    openssl ec -in "$p/sa.key.tmp" -pubout -out "$p/sa.pub.tmp" 2>/dev/null
    mv "$p/sa.key.tmp" "$p/sa.key"; chmod 600 "$p"/*.key; mv "$p/sa.pub.tmp" "$p/sa.pub"
  fi
  # The API server's client certificate for webhooks (the product's mode clientAuth=required
  # checks it); signed by the cluster CA like every other client, so only its name sets it apart.
  [ -f "$p/apiserver-webhook-client.crt" ] || pki_sign "$p" apiserver-webhook-client kube-apiserver-webhook-client "" "$cli"
  pki_admission_config
  for n in admin kcm sched proxy; do pki_kubeconfig "$n"; done
  for ((i = 1; i <= $1; i++)); do
    n=$(node_name "$i")
    [ -f "$p/kubelet-$n.crt" ] || pki_sign "$p" "kubelet-$n" "system:node:$n" system:nodes "$cli"
    [ -f "$p/kubelet-$n-serving.crt" ] || pki_sign "$p" "kubelet-$n-serving" "$n" "" \
      "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:$n,IP:$(node_ip "$i")"
    pki_kubeconfig "kubelet-$n"
  done
}

# The API server's --admission-control-config-file: both webhook admission plugins present the
# webhook client certificate to every webhook ('*' is the default entry of the kubeconfig it names;
# a user entry named <service>.<namespace>.svc would apply to one webhook only).
pki_admission_config() {
  local p="$STATE/pki" a="$STATE/admission"
  mkdir -p "$a"
  cat >"$a/webhook.kubeconfig" <<EOF2
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: $p/apiserver-webhook-client.crt
    client-key: $p/apiserver-webhook-client.key
EOF2
  cat >"$a/admission.yaml" <<EOF2
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $a/webhook.kubeconfig
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $a/webhook.kubeconfig
EOF2
}
