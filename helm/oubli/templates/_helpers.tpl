{{/* Names, labels and the pod parts that the worker, the migration Job and the retention CronJob share. */}}

{{- define "oubli.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "oubli.fullname" -}}
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

{{- define "oubli.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "oubli.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oubli.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "oubli.labels" -}}
helm.sh/chart: {{ include "oubli.chart" . }}
{{ include "oubli.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The worker pods: what the Deployment, the PDB and the metrics Service select. */}}
{{- define "oubli.workerSelectorLabels" -}}
{{ include "oubli.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "oubli.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oubli.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The migration Job runs before the release's own objects exist (pre-install), so it gets its own
hook ServiceAccount when the chart creates one; an existing ServiceAccount is used as it is.
*/}}
{{- define "oubli.migrationServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-migrate" (include "oubli.serviceAccountName" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "oubli.serviceAccountName" . }}
{{- end }}
{{- end }}

{{- define "oubli.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* drain_seconds as the worker sees it (pydantic's default is 20). */}}
{{- define "oubli.drainSeconds" -}}
{{- $worker := default dict .Values.config.worker }}
{{- if hasKey $worker "drain_seconds" }}{{ ceil $worker.drain_seconds | int }}{{ else }}20{{ end }}
{{- end }}

{{- define "oubli.httpPort" -}}
{{- $worker := default dict .Values.config.worker }}
{{- if hasKey $worker "http_port" }}{{ $worker.http_port | int }}{{ else }}8080{{ end }}
{{- end }}

{{/*
The grace period must outlast the whole shutdown. After SIGTERM the worker drains in-flight calls for
up to config.worker.drain_seconds; everything after that (publishing the last receipts, committing
offsets, leaving the group, flushing the producer) shares one budget of 10 s, so close() ends within
drain + 10 s in total. The grace period is drain + shutdownMarginSeconds (the schema keeps the margin
>= 15: 10 s of close() plus 5 s for the interpreter to exit and the kubelet to see it), or an
explicit value checked here against the same drain + 15 s.
*/}}
{{- define "oubli.terminationGracePeriodSeconds" -}}
{{- $drain := include "oubli.drainSeconds" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain .Values.shutdownMarginSeconds }}
{{- else }}
{{- $explicit := .Values.terminationGracePeriodSeconds | int }}
{{- if lt $explicit (add $drain 15) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least config.worker.drain_seconds (%d) + 15 s: after the drain, the worker has up to 10 s more to publish, commit, leave the group and flush" $explicit $drain) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/* The oubli YAML config file, as the ConfigMaps hold it. */}}
{{- define "oubli.configYaml" -}}
{{- toYaml .Values.config }}
{{- end }}

{{/*
Every ${NAME} the config needs (no :-default) must reach the pod. When no whole Secret is mounted
with envFrom, each one must be named in secrets.env or env, or the worker would refuse to start.
*/}}
{{- define "oubli.checkEnvReferences" -}}
{{- if not .Values.secrets.envFrom }}
{{- $provided := dict }}
{{- range $name, $_ := .Values.secrets.env }}{{ $_ := set $provided $name true }}{{ end }}
{{- range .Values.env }}{{ $_ := set $provided .name true }}{{ end }}
{{- range $ref := regexFindAll "\\$\\{[A-Z_][A-Z0-9_]*\\}" (include "oubli.configYaml" .) -1 | uniq }}
{{- $name := trimSuffix "}" (trimPrefix "${" $ref) }}
{{- if not (hasKey $provided $name) }}
{{- fail (printf "config references ${%s} but no Secret provides it: add it to secrets.env or list a Secret in secrets.envFrom" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "oubli.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "oubli.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Environment: the config file, the pod's name as worker id, secret references, plain extras. */}}
{{- define "oubli.env" -}}
- name: OUBLI_CONFIG
  value: /etc/oubli/oubli.yaml
- name: OUBLI_WORKER_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: TMPDIR
  value: /tmp
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- range $name, $ref := .Values.secrets.env }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ $ref.key | quote }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "oubli.envFrom" -}}
{{- range .Values.secrets.envFrom }}
- secretRef:
    name: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "oubli.volumeMounts" -}}
- name: config
  mountPath: /etc/oubli
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- range .Values.extraVolumeMounts }}
{{- /* The config volume is a read-only ConfigMap: the kubelet cannot create a mount point inside it. */}}
{{- if or (eq (clean .mountPath) "/tmp" "/etc/oubli") (hasPrefix "/etc/oubli/" .mountPath) }}
{{- fail (printf "extraVolumeMounts: %s is taken by the chart (/etc/oubli holds the config, /tmp the spool); mount elsewhere, e.g. /etc/oubli-tls" .mountPath) }}
{{- end }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* $configMap: the ConfigMap's name (the migration hook has its own copy). */}}
{{- define "oubli.volumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
    items:
      - key: oubli.yaml
        path: oubli.yaml
- name: tmp
  emptyDir:
    {{- with .root.Values.tmpVolume.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .root.Values.tmpVolume.sizeLimit }}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "oubli.podScheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The ServiceMonitor follows the PrometheusRule unless metrics.serviceMonitor.enabled says otherwise. */}}
{{- define "oubli.serviceMonitorEnabled" -}}
{{- $on := .Values.metrics.serviceMonitor.enabled }}
{{- if kindIs "invalid" $on }}{{ $on = .Values.prometheusRule.enabled }}{{ end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* prometheus.io/* annotations: by default only when no ServiceMonitor scrapes the pods already. */}}
{{- define "oubli.scrapeAnnotations" -}}
{{- $on := .Values.metrics.scrapeAnnotations }}
{{- if kindIs "invalid" $on }}{{ $on = not (include "oubli.serviceMonitorEnabled" .) }}{{ end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* The existing Secrets the pods read, comma-separated (for Reloader). */}}
{{- define "oubli.secretNames" -}}
{{- $names := list }}
{{- range .Values.secrets.envFrom }}{{ $names = append $names . }}{{ end }}
{{- range $_, $ref := .Values.secrets.env }}{{ $names = append $names $ref.name }}{{ end }}
{{- range .Values.extraVolumes }}{{ with .secret }}{{ $names = append $names .secretName }}{{ end }}{{ end }}
{{- $names | uniq | sortAlpha | join "," }}
{{- end }}
