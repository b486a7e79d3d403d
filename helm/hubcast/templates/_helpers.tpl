{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "hubcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, with the chart name appended unless it is already part of it. Truncated so
that "<fullname>-router" still fits 63 characters.
*/}}
{{- define "hubcast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hubcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "hubcast.labels" -}}
helm.sh/chart: {{ include "hubcast.chart" . }}
{{ include "hubcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hubcast
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "hubcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hubcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one role: include with (dict "root" $ "component" "edge"). */}}
{{- define "hubcast.componentLabels" -}}
{{ include "hubcast.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hubcast.componentSelectorLabels" -}}
{{ include "hubcast.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hubcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hubcast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hubcast.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
One HUBCAST_* value as a quoted string. Helm reads every YAML number as a float, so whole numbers are
printed as integers (268435456, not 2.68435456e+08); lists become JSON arrays, which hubcast parses.
*/}}
{{- define "hubcast.envValue" -}}
{{- if kindIs "slice" . }}
{{- toJson . | quote }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . | toString | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}

{{/*
The pod spec parts both roles share: include with (dict "root" $ "role" .Values.edge "component" "edge").
*/}}
{{- define "hubcast.podCommon" -}}
{{- $root := .root }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "hubcast.serviceAccountName" $root }}
# hubcast never calls the Kubernetes API.
automountServiceAccountToken: false
# Service links would add variables such as HUBCAST_EDGE_SERVICE_HOST for Services named hubcast-*,
# and hubcast refuses to start on an unknown HUBCAST_* variable.
enableServiceLinks: false
{{- with .role.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .role.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
topologySpreadConstraints:
{{- if .role.topologySpreadConstraints }}
{{- range .role.topologySpreadConstraints }}
{{- $constraint := deepCopy . }}
{{- if not $constraint.labelSelector }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "hubcast.componentSelectorLabels" (dict "root" $root "component" $.component) | fromYaml)) }}
{{- end }}
  - {{ toYaml $constraint | nindent 4 | trim }}
{{- end }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "hubcast.componentSelectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
{{- end }}
{{- end }}

{{/* The container parts both roles share. */}}
{{- define "hubcast.containerCommon" -}}
{{- $root := .root }}
image: {{ include "hubcast.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
ports:
  - name: http
    containerPort: 8080
    protocol: TCP
envFrom:
  - configMapRef:
      name: {{ include "hubcast.fullname" $root }}
readinessProbe:
  {{- toYaml .role.readinessProbe | nindent 2 }}
livenessProbe:
  {{- toYaml .role.livenessProbe | nindent 2 }}
resources:
  {{- toYaml .role.resources | nindent 2 }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
{{- end }}

{{/* HUBCAST_BUS__AMQP_URL from its Secret. */}}
{{- define "hubcast.amqpEnv" -}}
- name: HUBCAST_BUS__AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.amqpUrl.existingSecret }}
      key: {{ .Values.secrets.amqpUrl.key }}
{{- end }}
