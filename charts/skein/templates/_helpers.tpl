{{/*
Names and labels shared by the templates.

Names are fixed, not derived from the release name: the mesh is a cluster singleton (one
MeshConfig named `default`), the operator's leader-election Lease is named skein-operator, and
fixed names keep the chart interchangeable with the plain manifests in config/.
*/}}

{{/* Name of the operator's Deployment, ServiceAccount, ClusterRole and their bindings. */}}
{{- define "skein.operator.name" -}}
skein-operator
{{- end }}

{{/* Name of the Service in front of the operator's /metrics. */}}
{{- define "skein.operator.metricsName" -}}
skein-operator-metrics
{{- end }}

{{/* Name of the operator's leader-election Role and RoleBinding. */}}
{{- define "skein.operator.leaderElectionName" -}}
skein-operator-leader-election
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "skein.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: skein
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
Selector of the operator's pods. A Deployment's selector is immutable, so it holds only the two
labels that identify the operator (the same as config/operator.yaml's).
*/}}
{{- define "skein.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skein.operator.name" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on the operator's objects. */}}
{{- define "skein.operator.labels" -}}
{{ include "skein.labels" . }}
{{ include "skein.operator.selectorLabels" . }}
{{- end }}

{{/* The operator's image: the tag defaults to the chart's appVersion. */}}
{{- define "skein.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
