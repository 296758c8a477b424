{{/*
Chart name, truncated to 63 characters (a DNS-1123 label).
*/}}
{{- define "meshfed-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every object. `helm install meshfed` and `helm install
meshfed-operator` both give "meshfed-operator", the name config/ uses too.
*/}}
{{- define "meshfed-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if or (contains .Release.Name $name) (contains $name .Release.Name) }}
{{- (ternary $name .Release.Name (contains .Release.Name $name)) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "meshfed-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "meshfed-operator.labels" -}}
helm.sh/chart: {{ include "meshfed-operator.chart" . }}
{{ include "meshfed-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: meshfed
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (immutable on a Deployment: never add to these).
*/}}
{{- define "meshfed-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshfed-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshfed-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshfed-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"true" when the operator must elect a leader: asked for, or more than one replica.
*/}}
{{- define "meshfed-operator.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "meshfed-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The subject every binding grants to: the operator's ServiceAccount.
*/}}
{{- define "meshfed-operator.subject" -}}
- kind: ServiceAccount
  name: {{ include "meshfed-operator.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/*
A map as YAML without its null values, at any depth, and without the maps
left empty by that: a default the user set to null is left out (e.g.
podSecurityContext.runAsUser on OpenShift, or seccompProfile.type).
*/}}
{{- define "meshfed-operator.withoutNulls" -}}
{{- $out := dict }}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{- $inner := include "meshfed-operator.withoutNulls" $value | fromYaml }}
{{- if $inner }}
{{- $_ := set $out $key $inner }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}
