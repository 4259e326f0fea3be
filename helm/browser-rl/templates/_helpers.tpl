{{/* Names, labels and shared pod fragments. Every component is addressed by "<fullname>-<component>". */}}

{{- define "browser-rl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "browser-rl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "env"). */}}
{{- define "browser-rl.componentName" -}}
{{- printf "%s-%s" (include "browser-rl.fullname" .root) .component -}}
{{- end -}}

{{- define "browser-rl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that never change over a release's life: used in selectors. */}}
{{- define "browser-rl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "browser-rl.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "browser-rl.labels" -}}
{{ include "browser-rl.selectorLabels" . }}
helm.sh/chart: {{ include "browser-rl.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: browser-rl
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Image reference of a component: registry/repository:tag, tag defaulting to the chart's appVersion. */}}
{{- define "browser-rl.image" -}}
{{- $img := .image -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- if $img.digest -}}
{{- printf "%s/%s@%s" $registry $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $registry $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security: non-root, no privilege escalation, default seccomp. */}}
{{- define "browser-rl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsUser }}
fsGroup: {{ .Values.security.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "browser-rl.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Scheduling knobs shared by every component; call with the component's values. */}}
{{- define "browser-rl.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "browser-rl.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Name of the Secret holding the hub token / API key (created by the chart or given). */}}
{{- define "browser-rl.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "browser-rl.componentName" (dict "root" . "component" "secrets") -}}
{{- end -}}
{{- end -}}

{{- define "browser-rl.secretsEnabled" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.create -}}true{{- end -}}
{{- end -}}

{{/* In-cluster URL of the inference Service (OpenAI-compatible API). */}}
{{- define "browser-rl.inferenceURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "browser-rl.componentName" (dict "root" . "component" "inference")) .Release.Namespace (int .Values.inference.port) -}}
{{- end -}}

{{/* Name of the PVC shared by trainer and inference for policy exchange (adapters, full checkpoints). */}}
{{- define "browser-rl.policyClaim" -}}
{{- if .Values.policyVolume.existingClaim -}}
{{- .Values.policyVolume.existingClaim -}}
{{- else -}}
{{- include "browser-rl.componentName" (dict "root" . "component" "policy") -}}
{{- end -}}
{{- end -}}
