{{/* The chart name, shortened to a DNS label. */}}
{{- define "podtask.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects (Deployment, Service, ServiceAccount, Roles).
The release name alone when it already contains the chart name.
*/}}
{{- define "podtask.fullname" -}}
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

{{/* Cluster-scoped objects carry the release namespace too: two releases must not collide. */}}
{{- define "podtask.clusterName" -}}
{{- printf "%s-%s" (include "podtask.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "podtask.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Pod selector of the operator; stable across upgrades. */}}
{{- define "podtask.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podtask.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of every object. Never app.kubernetes.io/managed-by=podtask: that marks run pods
(the NetworkPolicy admits exactly those).
*/}}
{{- define "podtask.labels" -}}
helm.sh/chart: {{ include "podtask.chart" . }}
{{ include "podtask.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: podtask
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "podtask.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podtask.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podtask.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "podtask.runnerImage" -}}
{{- printf "%s:%s" .Values.runnerImage.repository (default .Chart.AppVersion .Values.runnerImage.tag) }}
{{- end }}

{{/* The run API's URL as run pods reach it. */}}
{{- define "podtask.apiUrl" -}}
{{- if .Values.operator.settings.apiUrl }}
{{- .Values.operator.settings.apiUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "podtask.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/* True (non-empty) in namespaced mode. */}}
{{- define "podtask.namespaced" -}}
{{- if eq .Values.rbac.mode "namespaced" }}true{{ end }}
{{- end }}

{{/* The watched namespaces, checked: namespaced mode needs at least one. */}}
{{- define "podtask.watchNamespaces" -}}
{{- if and (include "podtask.namespaced" .) (not .Values.rbac.namespaces) }}
{{- fail "rbac.mode=namespaced needs rbac.namespaces: the namespaces the operator watches" }}
{{- end }}
{{- toJson (uniq .Values.rbac.namespaces) }}
{{- end }}

{{/*
The rights the operator needs on namespaced resources: granted by one ClusterRole in
cluster mode, and by a Role in each watched namespace in namespaced mode.
*/}}
{{- define "podtask.namespacedRules" -}}
- apiGroups: ["podtask.dev"]
  resources: ["tasks", "taskruns", "schedules", "queues", "waittokens"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["podtask.dev"]
  resources: ["tasks/status", "taskruns/status", "schedules/status", "queues/status", "waittokens/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Output chunks, payloads and the run API's signing key.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Queue slots are Leases; each queue's ResourceQuota is the apiserver-enforced backstop.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["resourcequotas"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}

{{/* Read-only rights on cluster-scoped objects, needed in both modes. */}}
{{- define "podtask.clusterReadRules" -}}
# kopf checks which CRDs exist; it never writes them.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
