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

{{/* Labels of a pod template: no chart or app version, so a chart bump neither replaces the
trainer Job (its name hashes the template) nor rolls pods whose spec did not change. Call with
(dict "root" $ "component" "env" "values" .Values.env). */}}
{{- define "browser-rl.podLabels" -}}
{{ include "browser-rl.selectorLabels" . }}
app.kubernetes.io/part-of: browser-rl
{{- if .client }}
{{ include "browser-rl.clientLabel" . }}
{{- end }}
{{- with .values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The label the NetworkPolicies admit as a client of env and inference pods (the trainer and
the `helm test` pod). */}}
{{- define "browser-rl.clientLabel" -}}
browser-rl.io/client: "true"
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
# Change volume ownership only when its root does not match (no recursive chown of a model
# cache or checkpoints on every start).
fsGroupChangePolicy: OnRootMismatch
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

{{/* Pod-level knobs every component offers (scheduling, runtime, priority); call with the
component's values. */}}
{{- define "browser-rl.scheduling" -}}
{{- with .runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
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
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A pod template's annotations: a config checksum (when given) and the user's. */}}
{{- define "browser-rl.podAnnotations" -}}
{{- with .checksum }}
checksum/config: {{ . }}
{{- end }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
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

{{/* The chart's own Secret (a generated API key and/or a hub token given as a value). */}}
{{- define "browser-rl.ownSecret" -}}
{{- include "browser-rl.componentName" (dict "root" . "component" "secrets") -}}
{{- end -}}

{{/* "true" when the pods get a hub token. */}}
{{- define "browser-rl.hfTokenEnabled" -}}
{{- with .Values.secrets.hfToken }}{{ if or .existingSecret .value }}true{{ end }}{{ end -}}
{{- end -}}

{{/* EnvVar entries of the secrets a pod needs: the hub token (optional: a public model needs
none) and, with apiKey.enabled, the API key (required: a missing key stops the pod at start with
CreateContainerConfigError naming the Secret and key, instead of a crash later). Call with
(dict "root" $ "hf" true|false "api" true|false). */}}
{{- define "browser-rl.secretEnv" -}}
{{- $s := .root.Values.secrets -}}
{{- if and .hf (include "browser-rl.hfTokenEnabled" .root) }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $s.hfToken.existingSecret | default (include "browser-rl.ownSecret" .root) }}, key: {{ $s.hfToken.key }}, optional: true}
{{- end }}
{{- if and .api $s.apiKey.enabled }}
- name: VLLM_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $s.apiKey.existingSecret | default (include "browser-rl.ownSecret" .root) }}, key: {{ $s.apiKey.key }}}
{{- end }}
{{- end -}}

{{/* The model as the chart places it: "hub" (downloaded by an init container), or "given" (an
absolute path or a pypi: source, used as is). */}}
{{- define "browser-rl.modelKind" -}}
{{- if or (hasPrefix "/" .Values.model.source) (hasPrefix "pypi:" .Values.model.source) -}}given{{- else -}}hub{{- end -}}
{{- end -}}

{{/* Where a pod finds the model: the given source, or <root>/<hub id> on the pod's volume.
Call with (dict "root" $ "under" "/models"). */}}
{{- define "browser-rl.modelPath" -}}
{{- if eq (include "browser-rl.modelKind" .root) "given" -}}
{{- .root.Values.model.source -}}
{{- else -}}
{{- printf "%s/%s" .under .root.Values.model.source -}}
{{- end -}}
{{- end -}}

{{/* The init container that downloads a hub model at the pinned revision into `under` (both GPU
pods use it, each onto its own volume). A marker written last makes an interrupted download
resume at the next start instead of being taken for complete. Call with
(dict "root" $ "image" <image values> "under" "/models" "volume" "models" "mount" "/models"). */}}
{{- define "browser-rl.fetchModelContainer" -}}
{{- $m := .root.Values.model -}}
- name: fetch-model
  image: {{ include "browser-rl.image" (dict "root" .root "image" .image) }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["python3", "-c"]
  args:
    - |
      import json, os, sys
      from huggingface_hub import HfApi, snapshot_download
      target, repo, revision, patterns = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
      marker = os.path.join(target, ".browser-rl-download")
      want = {"repo": repo, "revision": revision, "patterns": patterns}
      if os.path.isfile(marker) and json.load(open(marker))["request"] == want:
          print("model ready in", target, json.load(open(marker)))
          sys.exit(0)
      # Resolve the revision first: it fails loudly when the hub cannot be reached (then the pod
      # retries), where snapshot_download would hand back a partial folder as if complete.
      commit = HfApi().repo_info(repo, revision=revision).sha
      snapshot_download(repo_id=repo, revision=commit, local_dir=target, allow_patterns=patterns)
      with open(marker + ".tmp", "w") as out:
          json.dump({"request": want, "commit": commit}, out)
      os.replace(marker + ".tmp", marker)
      print("model ready in", target, "(", repo, "at", commit, ")")
    - {{ include "browser-rl.modelPath" (dict "root" .root "under" .under) | quote }}
    - {{ $m.source | quote }}
    - {{ $m.revision | quote }}
    - {{ toJson $m.allowPatterns | quote }}
  env:
    - name: HOME
      value: /tmp/home
    - name: HF_HOME
      value: {{ printf "%s/.hf" .under }}
    - name: HF_HUB_DISABLE_TELEMETRY
      value: "1"
    {{- with (include "browser-rl.secretEnv" (dict "root" .root "hf" true "api" false) | trim) }}{{ . | nindent 4 }}{{- end }}
    {{- with $m.fetch.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    {{- toYaml $m.fetch.resources | nindent 4 }}
  securityContext:
    {{- include "browser-rl.containerSecurityContext" .root | nindent 4 }}
  volumeMounts:
    - {name: {{ .volume }}, mountPath: {{ .mount }}}
    - {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* The init container that creates the policy volume's folders owned by the pods' user, on
RWX volumes that ignore fsGroup. Root, but only the file-ownership capabilities. */}}
{{- define "browser-rl.preparePolicyVolume" -}}
- name: prepare-policy-volume
  image: {{ include "browser-rl.image" (dict "root" .root "image" .image) }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["sh", "-c"]
  args:
    - mkdir -p /policy/updates /policy/inference && chown {{ .root.Values.security.runAsUser }}:{{ .root.Values.security.runAsUser }} /policy/updates /policy/inference && chmod 0775 /policy/updates /policy/inference
  resources:
    requests: {cpu: 50m, memory: 32Mi}
    limits: {cpu: 200m, memory: 64Mi}
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
      add: ["CHOWN", "FOWNER", "DAC_OVERRIDE"]
  volumeMounts:
    - {name: policy, mountPath: /policy}
{{- end -}}

{{/* Whether a Prometheus Operator kind is rendered: enabled: true always, "auto" only where the
cluster serves it (an install without the CRDs would fail). Call with (dict "root" $ "enabled"
<value> "kind" "PodMonitor"). */}}
{{- define "browser-rl.operatorKind" -}}
{{- if eq (toString .enabled) "true" -}}true
{{- else if and (eq (toString .enabled) "auto") (.root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind)) -}}true
{{- end -}}
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
