{{/* vim: set filetype=mustache: */}}

{{- define "kekeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: "<release>-kekeeper", or the release name when it already contains the chart name.
*/}}
{{- define "kekeeper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kekeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kekeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kekeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kekeeper.labels" -}}
helm.sh/chart: {{ include "kekeeper.chart" . }}
{{ include "kekeeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kekeeper
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kekeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kekeeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kekeeper.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when the operator runs with --leader-elect (the default), "" otherwise. Several replicas
without it would all reconcile, so that combination is refused.
*/}}
{{- define "kekeeper.leaderElect" -}}
{{- if or .Values.leaderElection.enabled .Values.leaderElection.force }}true
{{- else if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "leaderElection.enabled=false with replicaCount=%d: every replica would reconcile and call KMS; set leaderElection.enabled=true (the default) or replicaCount=1" (int .Values.replicaCount)) }}
{{- end }}
{{- end }}

{{- define "kekeeper.leaseName" -}}
{{- default (include "kekeeper.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
==========================================================================================
RBAC - the single source of truth for what the operator may do.
Exactly the verbs the controller uses; no wildcards. Keep in sync with src/controller.rs.

kekeeper.rbac.rules: rules for the watched scope (ClusterRole, or a Role per watched namespace).
kekeeper.rbac.leaseRules: rules for leader election (Role in the release namespace).
==========================================================================================
*/}}
{{- define "kekeeper.rbac.rules" -}}
# RecordingKeyConfigs: read from a watch cache; the spec is never written by the operator.
- apiGroups: ["kekeeper.io"]
  resources: ["recordingkeyconfigs"]
  verbs: ["list", "watch"]
# Status is written only through the status subresource, by server-side apply; a write
# refused with 409 (someone changed the resource) reads the newer one there (get).
- apiGroups: ["kekeeper.io"]
  resources: ["recordingkeyconfigs/status"]
  verbs: ["get", "patch"]
# Key-pair Secrets (type kekeeper.io/key-pair). `delete` only with pruneRetiredKeyPairs.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"{{ if .Values.pruneRetiredKeyPairs }}, "delete"{{ end }}]
# Public-key ConfigMaps (<config>-public-keys), read from a watch cache, written by apply.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch"]
# Kubernetes Events about RecordingKeyConfigs (events.k8s.io/v1).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "kekeeper.rbac.leaseRules" -}}
# Leader election: one Lease in the release namespace. `create` cannot be limited by
# resourceNames (the name is not known to the authorizer on create).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "kekeeper.leaseName" . | quote }}]
  verbs: ["get", "update"]
{{- end }}
