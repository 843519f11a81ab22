{{- define "pgd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The product excludes its own pods by app.kubernetes.io/name=pod-graceful-drain. */}}
{{- define "pgd.selectorLabels" -}}
app.kubernetes.io/name: pod-graceful-drain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "pgd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: pod-graceful-drain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pgd.instance" -}}
{{- default (printf "%s.%s" .Release.Namespace .Release.Name) .Values.instance | trunc 63 | trimSuffix "-" | trimSuffix "." -}}
{{- end -}}

{{- define "pgd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pgd.tlsSecret" -}}{{ include "pgd.fullname" . }}-tls{{- end -}}
{{- define "pgd.sealSecret" -}}{{ include "pgd.fullname" . }}-seal{{- end -}}

{{- define "pgd.excludedNamespaces" -}}
{{- $all := concat (list "kube-system" .Release.Namespace) .Values.excludedNamespaces | uniq -}}
{{- join "," $all -}}
{{- end -}}

{{/* Cross-field checks the schema cannot express; each message names the values. */}}
{{- define "pgd.validate" -}}
{{- $d := .Values.drain -}}
{{- if gt (int $d.minSeconds) (int $d.seconds) -}}
{{- fail (printf "drain.minSeconds (%v) must not exceed drain.seconds (%v)" $d.minSeconds $d.seconds) -}}
{{- end -}}
{{- if gt (int $d.seconds) (int $d.maxSeconds) -}}
{{- fail (printf "drain.seconds (%v) must not exceed drain.maxSeconds (%v)" $d.seconds $d.maxSeconds) -}}
{{- end -}}
{{- if gt (int .Values.tls.certSeconds) (int .Values.tls.caSeconds) -}}
{{- fail (printf "tls.certSeconds (%v) must not exceed tls.caSeconds (%v)" .Values.tls.certSeconds .Values.tls.caSeconds) -}}
{{- end -}}
{{- $ca := .Values.clientAuth -}}
{{- if ne $ca.mode "none" -}}
{{- if not $ca.allowedNames -}}
{{- fail (printf "clientAuth.allowedNames must name the API server's client identity when clientAuth.mode is %s (a cluster CA signs many clients)" $ca.mode) -}}
{{- end -}}
{{- if and (not $ca.caSecret.name) (not $ca.caConfigMap.name) -}}
{{- fail "clientAuth.caConfigMap.name or clientAuth.caSecret.name must name the client CA" -}}
{{- end -}}
{{- end -}}
{{- include "pgd.keepInstance" . -}}
{{- end -}}

{{/*
The instance cannot change on upgrade. The pods drained by the running release carry its instance
in their draining label and sealed schedules; replicas of another instance would pass them as
another installation's, and they would stay out of their Services and controllers. Refused with
the way out. `lookup` reads the running Deployment (it answers nothing under `helm template` and
client-side dry runs, where nothing is running to compare with).
*/}}
{{- define "pgd.keepInstance" -}}
{{- $running := lookup "apps/v1" "Deployment" .Release.Namespace (include "pgd.fullname" .) -}}
{{- $want := include "pgd.instance" . -}}
{{- if $running -}}
{{- range $c := $running.spec.template.spec.containers -}}
{{- range $e := (default list $c.env) -}}
{{- if and (eq $e.name "PGD_INSTANCE") (ne (toString $e.value) $want) -}}
{{- fail (printf "instance cannot change on upgrade (running: %q, this upgrade: %q): the pods the running release is draining carry %q and would be left out of their Services; upgrade with --set instance=%s, or uninstall (which finishes every drain) and install again" $e.value $want $e.value $e.value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the replicas and the uninstall hook. */}}
{{- define "pgd.commonEnv" -}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: PGD_INSTANCE
  value: {{ include "pgd.instance" . | quote }}
- name: PGD_SERVICE_ACCOUNT
  value: {{ include "pgd.fullname" . | quote }}
- name: PGD_WEBHOOK_CONFIGURATION
  value: {{ include "pgd.fullname" . | quote }}
- name: PGD_LEASE_NAME
  value: {{ include "pgd.fullname" . | quote }}
- name: PGD_SEAL_SECRET
  value: {{ include "pgd.sealSecret" . | quote }}
- name: PGD_DRAIN_SECONDS
  value: {{ .Values.drain.seconds | int64 | quote }}
- name: PGD_DRAIN_MIN_SECONDS
  value: {{ .Values.drain.minSeconds | int64 | quote }}
- name: PGD_DRAIN_MAX_SECONDS
  value: {{ .Values.drain.maxSeconds | int64 | quote }}
- name: PGD_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: RUST_LOG
  value: {{ .Values.log.level | quote }}
{{- end -}}
