{{/* The trainer's config file: values' trainer.config with what the chart knows filled in. */}}
{{- define "browser-rl.trainerConfig" -}}
{{- $v := .Values -}}
{{- $lora := true -}}
{{- with $v.trainer.config.lora }}{{ if hasKey . "enabled" }}{{ $lora = .enabled }}{{ end }}{{ end -}}
{{- $overlay := dict
    "run" (dict "output_dir" "/checkpoints/run")
    "model" (dict "cache_dir" "/checkpoints/model-cache")
    "use_cpu" (eq (int $v.trainer.gpus) 0)
    "metrics" (dict "port" (int $v.trainer.metricsPort) "host" "0.0.0.0")
    "env" (dict
        "discovery" "kubernetes"
        "kubernetes_service" (include "browser-rl.componentName" (dict "root" . "component" "env"))
        "kubernetes_namespace" .Release.Namespace
        "sessions_per_endpoint" (int $v.env.maxSessions))
-}}
{{- if and $v.inference.enabled $lora (not $v.inference.lora.enabled) }}
{{- fail "trainer.config.lora.enabled needs inference.lora.enabled (the adapter is served by vLLM)" }}
{{- end }}
{{- if and $v.inference.enabled $lora (gt (int (default 8 (default dict $v.trainer.config.lora).r)) (int $v.inference.lora.maxRank)) }}
{{- fail "trainer.config.lora.r exceeds inference.lora.maxRank: vLLM would refuse the adapter" }}
{{- end }}
{{- $transfer := $v.inference.weightTransfer.mode -}}
{{- if and $v.inference.enabled $lora (eq $transfer "nccl") }}
{{- fail "inference.weightTransfer.mode nccl carries full weights: set trainer.config.lora.enabled false" }}
{{- end }}
{{- $prompt := default dict $v.trainer.config.prompt -}}
{{- $generation := default dict $v.trainer.config.generation -}}
{{- if and $v.inference.enabled (hasKey $prompt "max_prompt_tokens") (hasKey $generation "max_new_tokens") }}
{{- if lt (int $v.inference.maxModelLen) (add (int $prompt.max_prompt_tokens) (int $generation.max_new_tokens)) }}
{{- fail "inference.maxModelLen must hold trainer.config.prompt.max_prompt_tokens + generation.max_new_tokens" }}
{{- end }}
{{- end }}
{{- if $v.inference.enabled }}
{{- $remote := dict "base_url" (include "browser-rl.inferenceURL" .) "model" $v.inference.servedModelName -}}
{{- $extra := dict -}}
{{- if include "browser-rl.secretsEnabled" . }}
{{- $_ := set $remote "api_key_env" "VLLM_API_KEY" -}}
{{- $_ := set $extra "api_key_env" "VLLM_API_KEY" -}}
{{- end }}
{{- $_ := set $overlay "generation" (dict "backend" "remote" "remote" $remote) -}}
{{- $sync := dict "enabled" true "base_url" (include "browser-rl.inferenceURL" .) "mode" (ternary "adapter" "full" $lora) -}}
{{- if eq $transfer "sharedVolume" }}
{{- $_ := set $sync "shared_dir" "/policy/updates" -}}
{{- $_ := set $extra "transport" "shared_dir" -}}
{{- else if eq $transfer "nccl" }}
{{- $_ := set $extra "transport" "nccl" -}}
{{- $_ := set $extra "nccl_master_address" (printf "%s.%s.svc" (include "browser-rl.componentName" (dict "root" . "component" "trainer")) .Release.Namespace) -}}
{{- $_ := set $extra "nccl_master_port" (int $v.inference.weightTransfer.ncclPort) -}}
{{- else }}
{{- $_ := set $extra "transport" "upload" -}}
{{- end }}
{{- $_ := set $sync "extra" $extra -}}
{{- $_ := set $overlay "inference" $sync -}}
{{- end }}
{{- $config := mergeOverwrite (deepCopy $v.trainer.config) $overlay -}}
{{- /* A restarted trainer pod resumes from its newest checkpoint unless the values say otherwise. */ -}}
{{- $checkpoint := default dict $config.checkpoint -}}
{{- if not (hasKey $checkpoint "resume_from_checkpoint") }}{{ $_ := set $checkpoint "resume_from_checkpoint" true }}{{ end -}}
{{- $_ := set $config "checkpoint" $checkpoint -}}
{{- toYaml $config }}
{{- end -}}

{{/* The trainer's pod template; the Job's name carries its hash so a changed template replaces the Job. */}}
{{- define "browser-rl.trainerPod" -}}
{{- $c := dict "root" . "component" "trainer" -}}
{{- $v := .Values.trainer -}}
metadata:
  labels:
    {{- include "browser-rl.labels" $c | nindent 4 }}
  annotations:
    checksum/config: {{ include "browser-rl.trainerConfig" . | sha256sum }}
spec:
  serviceAccountName: {{ include "browser-rl.componentName" $c }}
  automountServiceAccountToken: true
  enableServiceLinks: false
  restartPolicy: OnFailure
  securityContext:
    {{- include "browser-rl.podSecurityContext" . | nindent 4 }}
  {{- with (include "browser-rl.imagePullSecrets" .) }}{{ . | nindent 2 }}{{- end }}
  {{- with (include "browser-rl.scheduling" $v) }}{{ . | nindent 2 }}{{- end }}
  containers:
    - name: trainer
      image: {{ include "browser-rl.image" (dict "root" . "image" $v.image) }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["train", "--config", "/etc/browser-rl/trainer.yaml"]
      env:
        - name: HOME
          value: /tmp/home
        - name: HF_HOME
          value: /checkpoints/hf
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef: {fieldPath: metadata.namespace}
        {{- if include "browser-rl.secretsEnabled" . }}
        - name: HF_TOKEN
          valueFrom:
            secretKeyRef: {name: {{ include "browser-rl.secretName" . }}, key: HF_TOKEN, optional: true}
        - name: VLLM_API_KEY
          valueFrom:
            secretKeyRef: {name: {{ include "browser-rl.secretName" . }}, key: VLLM_API_KEY, optional: true}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ $v.metricsPort }}
          protocol: TCP
        {{- if and .Values.inference.enabled (eq .Values.inference.weightTransfer.mode "nccl") }}
        - name: nccl
          containerPort: {{ .Values.inference.weightTransfer.ncclPort }}
          protocol: TCP
        {{- end }}
      startupProbe:
        # Model loading comes first; /metrics answers as soon as the process is up.
        httpGet: {path: /metrics, port: metrics}
        periodSeconds: 5
        failureThreshold: 120
      livenessProbe:
        httpGet: {path: /metrics, port: metrics}
        periodSeconds: 20
        timeoutSeconds: 10
        failureThreshold: 6
      resources:
        {{- include "browser-rl.resourcesWithGPUs" (dict "resources" $v.resources "gpus" $v.gpus) | nindent 8 }}
      securityContext:
        {{- include "browser-rl.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - {name: config, mountPath: /etc/browser-rl, readOnly: true}
        - {name: checkpoints, mountPath: /checkpoints}
        - {name: tmp, mountPath: /tmp}
        - {name: dshm, mountPath: /dev/shm}
        {{- if .Values.policyVolume.enabled }}
        - {name: policy, mountPath: /policy}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "browser-rl.componentName" $c }}
    - name: checkpoints
      persistentVolumeClaim:
        claimName: {{ $v.checkpoints.existingClaim | default (include "browser-rl.componentName" (dict "root" . "component" "checkpoints")) }}
    - name: tmp
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: 2Gi
    {{- if .Values.policyVolume.enabled }}
    - name: policy
      persistentVolumeClaim:
        claimName: {{ include "browser-rl.policyClaim" . }}
    {{- end }}
{{- end -}}

{{/* resources with nvidia.com/gpu added to requests and limits when gpus > 0. */}}
{{- define "browser-rl.resourcesWithGPUs" -}}
{{- $r := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $r "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $r.limits)) -}}
{{- $_ := set $r "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $r.requests)) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}
