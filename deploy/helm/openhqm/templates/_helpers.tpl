{{/* Names ------------------------------------------------------------------------------------ */}}
{{- define "openhqm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openhqm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: <fullname>-<component>, within 63 characters. */}}
{{- define "openhqm.componentName" -}}
{{- printf "%s-%s" (include "openhqm.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "openhqm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "openhqm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "openhqm.secretName" -}}
{{- default (include "openhqm.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------- */}}
{{- define "openhqm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openhqm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "openhqm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "openhqm.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: openhqm
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Labels for objects that belong to no single component (ConfigMap, Secret, ...). */}}
{{- define "openhqm.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "openhqm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: openhqm
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Image ------------------------------------------------------------------------------------ */}}
{{- define "openhqm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Shutdown: one value drives the drain timeout, the preStop sleep and the grace period. ------- */}}
{{- define "openhqm.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.shutdownTimeoutSeconds) (int .Values.terminationMarginSeconds) -}}
{{- end -}}

{{- define "openhqm.preStop" -}}
preStop:
  exec:
    command: ["sleep", "{{ int .Values.preStopSleepSeconds }}"]
{{- end -}}

{{/* Configuration ------------------------------------------------------------------------------ */}}
{{- define "openhqm.requestQueue" -}}
{{- $queue := default dict .Values.config.queue -}}
{{- default "openhqm-requests" $queue.request_queue -}}
{{- end -}}

{{- define "openhqm.queueType" -}}
{{- $queue := default dict .Values.config.queue -}}
{{- default "sqlite" $queue.type -}}
{{- end -}}

{{/* config.yaml: the user's `config`, as given. */}}
{{- define "openhqm.config" -}}
{{- with .Values.config }}{{ toYaml . }}{{ else }}{}{{ end -}}
{{- end -}}

{{/*
Settings the chart owns, as environment variables: OpenHQM reads flags over the environment over the
config file, so these win over `config` and over the image's ENV, and the probes, ports and grace
period always agree with the process. Takes (dict "root" $ "component" "listener|server|worker|sidecar").
*/}}
{{- define "openhqm.ownedEnv" -}}
{{- $v := .root.Values -}}
{{- $env := dict
      "OPENHQM_SERVER__HOST" "0.0.0.0"
      "OPENHQM_DATA_DIR" "/var/lib/openhqm"
      "OPENHQM_WORKER__SHUTDOWN_TIMEOUT_S" (toString (int $v.shutdownTimeoutSeconds)) -}}
{{- if has .component (list "listener" "server") -}}
{{- $_ := set $env "OPENHQM_SERVER__PORT" (toString (int $v.listener.port)) -}}
{{- end -}}
{{- if eq .component "worker" -}}
{{- $_ := set $env "OPENHQM_WORKER__HEALTH_PORT" (toString (int $v.worker.healthPort)) -}}
{{- end -}}
{{- if and (has .component (list "worker" "server")) (not (kindIs "invalid" $v.worker.concurrency)) -}}
{{- $_ := set $env "OPENHQM_WORKER__CONCURRENCY" (toString (int $v.worker.concurrency)) -}}
{{- end -}}
{{- if eq .component "sidecar" -}}
{{- $_ := set $env "OPENHQM_WORKER__HEALTH_PORT" (toString (int $v.sidecar.healthPort)) -}}
{{- $_ := set $env "OPENHQM_PROXY__ENABLED" "true" -}}
{{- $_ := set $env "OPENHQM_PROXY__DEFAULT_ENDPOINT" (printf "http://127.0.0.1:%d" (int $v.sidecar.appPort)) -}}
{{- $_ := set $env "OPENHQM_PROXY__SIDECAR__ENABLED" "true" -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Every variable name the chart owns in any component, for the conflict check. */}}
{{- define "openhqm.ownedEnvNames" -}}
{{- $names := list "OPENHQM_CONFIG" -}}
{{- range $component := list "listener" "server" "worker" "sidecar" -}}
{{- $names = concat $names (keys (include "openhqm.ownedEnv" (dict "root" $.root "component" $component) | fromYaml)) -}}
{{- end -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* Pod pieces --------------------------------------------------------------------------------- */}}
{{- define "openhqm.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if and .root.Values.secret.create (not .root.Values.secret.existingSecret) }}
checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
{{- end }}
{{- if .root.Values.metricsAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "openhqm.env" -}}
- name: OPENHQM_CONFIG
  value: /etc/openhqm/config.yaml
{{- range $name, $value := include "openhqm.ownedEnv" . | fromYaml }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- $userVars := list }}
{{- range concat .root.Values.secretEnv .root.Values.extraEnv (default list .extraEnv) }}
{{- $userVars = append $userVars .name }}
{{- end }}
{{- with include "openhqm.storeEnv" (dict "root" .root "skip" $userVars) | fromYamlArray }}
{{ toYaml . }}
{{- end }}
{{- $secretName := include "openhqm.secretName" .root }}
{{- range .root.Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ .key }}
      {{- if hasKey . "optional" }}
      optional: {{ .optional }}
      {{- end }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "openhqm.volumeMounts" -}}
- name: openhqm-config
  mountPath: /etc/openhqm
  readOnly: true
- name: openhqm-data
  mountPath: /var/lib/openhqm
- name: openhqm-tmp
  mountPath: /tmp
{{- end -}}

{{- define "openhqm.volumes" -}}
- name: openhqm-config
  configMap:
    name: {{ include "openhqm.fullname" .root }}
- name: openhqm-data
  {{- if and .persistent .root.Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (include "openhqm.componentName" (dict "root" .root "component" "data")) .root.Values.persistence.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .root.Values.dataVolume.sizeLimit }}
  {{- end }}
- name: openhqm-tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpVolume.sizeLimit }}
{{- end -}}

{{- define "openhqm.podScheduling" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Refuse combinations that cannot work, with a message that says what to change. ------------ */}}
{{- define "openhqm.validate" -}}
{{- if not (has .Values.mode (list "split" "serve")) -}}
{{- fail (printf "mode must be split or serve, not %q" .Values.mode) -}}
{{- end -}}
{{- include "openhqm.validateStores" . -}}
{{- if and .Values.keda.enabled (eq .Values.mode "serve") -}}
{{- fail "keda.enabled scales the worker Deployment, and mode=serve has none: use mode=split" -}}
{{- end -}}
{{- if and .Values.keda.enabled (not .Values.worker.enabled) (not .Values.sidecar.enabled) -}}
{{- fail "keda.enabled needs a Deployment to scale: enable worker or sidecar" -}}
{{- end -}}
{{- if and .Values.sidecar.enabled (eq .Values.mode "serve") -}}
{{- fail "sidecar.enabled needs mode=split: the sidecar's worker shares the listener's queue over a network broker" -}}
{{- end -}}
{{- if and .Values.persistence.enabled (eq .Values.mode "split") -}}
{{- fail "persistence is for mode=serve (one pod holding the SQLite files); in split mode the broker holds the queue" -}}
{{- end -}}
{{- if lt (int .Values.shutdownTimeoutSeconds) 0 -}}
{{- fail "shutdownTimeoutSeconds must be >= 0" -}}
{{- end -}}
{{- $owned := include "openhqm.ownedEnvNames" (dict "root" .) | fromJsonArray -}}
{{- range $env := concat .Values.secretEnv .Values.extraEnv .Values.listener.extraEnv .Values.worker.extraEnv .Values.sidecar.extraEnv -}}
{{- if has $env.name $owned -}}
{{- fail (printf "%s is set by the chart (from shutdownTimeoutSeconds, listener.port, worker.healthPort, worker.concurrency or sidecar.*): change that value instead of adding the variable" $env.name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.sidecar.enabled .Values.sidecar.holdAppDuringDrain (dig "lifecycle" "preStop" "" .Values.sidecar.app.spec) -}}
{{- fail "sidecar.app.spec.lifecycle.preStop is set and sidecar.holdAppDuringDrain would replace it: set holdAppDuringDrain=false and make your hook outlast preStopSleepSeconds + shutdownTimeoutSeconds" -}}
{{- end -}}
{{- end -}}
