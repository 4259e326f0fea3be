{{/* The trainer's config file: values' trainer.config with what the chart knows filled in. */}}
{{- define "browser-rl.trainerConfig" -}}
{{- $v := .Values -}}
{{- $user := $v.trainer.config -}}
{{- if (default dict $user.model).source }}
{{- fail "set the model with model.source (one value for trainer and vLLM), not trainer.config.model.source" }}
{{- end }}
{{- $lora := true -}}
{{- with $user.lora }}{{ if hasKey . "enabled" }}{{ $lora = .enabled }}{{ end }}{{ end -}}
{{- $apiKey := $v.secrets.apiKey.enabled -}}
{{- if and (ne $v.trainer.distributed "ddp") (gt (mul (int $v.trainer.nodes) (max 1 (int $v.trainer.gpus))) 1) }}
{{- if not $v.inference.enabled }}
{{- fail (printf "trainer.distributed %s generates with vLLM: enable inference (rank 0 alone cannot run a sharded model)" $v.trainer.distributed) }}
{{- end }}
{{- if eq $v.inference.weightTransfer.mode "nccl" }}
{{- fail (printf "trainer.distributed %s with inference.weightTransfer.mode nccl: the NCCL transfer reads whole parameters; use sharedVolume" $v.trainer.distributed) }}
{{- end }}
{{- end }}
{{- if and (ne $v.trainer.offload "none") (eq $v.trainer.distributed "ddp") }}
{{- fail (printf "trainer.offload %s needs trainer.distributed fsdp2 or zero3: DDP keeps a whole model and optimizer on every GPU" $v.trainer.offload) }}
{{- end }}
{{- if and (eq $v.trainer.offload "optimizer") (eq $v.trainer.distributed "fsdp2") }}
{{- fail "trainer.offload optimizer with trainer.distributed fsdp2: FSDP2 offloads parameters, gradients and the optimizer step together; use offload all, or zero3" }}
{{- end }}
{{- $overlay := dict
    "run" (dict "output_dir" "/checkpoints/run" "distributed" $v.trainer.distributed "offload" $v.trainer.offload)
    "model" (dict
        "source" (include "browser-rl.modelPath" (dict "root" . "under" "/checkpoints/models"))
        "cache_dir" "/checkpoints/model-cache")
    "use_cpu" (eq (int $v.trainer.gpus) 0)
    "metrics" (dict "port" (int $v.trainer.metricsPort) "host" "0.0.0.0")
    "env" (dict
        "discovery" (dict
            "type" "kubernetes"
            "service" (include "browser-rl.componentName" (dict "root" . "component" "env"))
            "namespace" .Release.Namespace)
        "local" (dict "pods" 0)
        "sessions_per_endpoint" (int $v.env.maxSessions))
-}}
{{- if and $v.inference.enabled $lora (not $v.inference.lora.enabled) }}
{{- fail "trainer.config.lora.enabled needs inference.lora.enabled (the adapter is served by vLLM)" }}
{{- end }}
{{- if and $v.inference.enabled $lora (gt (int (default 8 (default dict $user.lora).r)) (int $v.inference.lora.maxRank)) }}
{{- fail "trainer.config.lora.r exceeds inference.lora.maxRank: vLLM would refuse the adapter" }}
{{- end }}
{{- $transfer := $v.inference.weightTransfer.mode -}}
{{- if and $v.inference.enabled $lora (eq $transfer "nccl") }}
{{- fail "inference.weightTransfer.mode nccl carries full weights: set trainer.config.lora.enabled false" }}
{{- end }}
{{- $prompt := default dict $user.prompt -}}
{{- $generation := default dict $user.generation -}}
{{- if and $v.inference.enabled (hasKey $prompt "max_prompt_tokens") (hasKey $generation "max_new_tokens") }}
{{- if lt (int $v.inference.maxModelLen) (add (int $prompt.max_prompt_tokens) (int $generation.max_new_tokens)) }}
{{- fail "inference.maxModelLen must hold trainer.config.prompt.max_prompt_tokens + generation.max_new_tokens" }}
{{- end }}
{{- end }}
{{- if $v.inference.enabled }}
{{- /* Every replica addressed directly (its ready pod in the Service's EndpointSlices): generation
     spread over them, every policy update sent to each (services/trainer/replicas.py). */ -}}
{{- $servers := dict
    "type" "kubernetes"
    "service" (include "browser-rl.componentName" (dict "root" . "component" "inference"))
    "namespace" .Release.Namespace
    "port_name" "http" -}}
{{- $backend := dict "type" "remote" "servers" $servers "model" $v.inference.servedModelName -}}
{{- $sync := dict "enabled" true "servers" $servers "mode" (ternary "adapter" "full" $lora) -}}
{{- if $apiKey }}
{{- $_ := set $backend "api_key_env" "VLLM_API_KEY" -}}
{{- $_ := set $sync "api_key_env" "VLLM_API_KEY" -}}
{{- end }}
{{- if eq $transfer "sharedVolume" }}
{{- $_ := set $sync "shared_dir" "/policy/updates" -}}
{{- $_ := set $sync "transport" "shared_dir" -}}
{{- else if eq $transfer "nccl" }}
{{- $_ := set $sync "transport" "nccl" -}}
{{- $_ := set $sync "nccl" (dict
    "master_address" (printf "%s.%s.svc" (include "browser-rl.componentName" (dict "root" . "component" "trainer")) .Release.Namespace)
    "master_port" (int $v.inference.weightTransfer.ncclPort)) -}}
{{- else }}
{{- $_ := set $sync "transport" "upload" -}}
{{- end }}
{{- $_ := set $overlay "generation" (dict "backend" $backend) -}}
{{- $_ := set $overlay "policy_sync" $sync -}}
{{- end }}
{{- $config := mergeOverwrite (deepCopy $user) $overlay -}}
{{- /* A restarted trainer pod resumes from its newest checkpoint unless the values say otherwise. */ -}}
{{- $checkpoint := default dict $config.checkpoint -}}
{{- if not (hasKey $checkpoint "resume_from_checkpoint") }}{{ $_ := set $checkpoint "resume_from_checkpoint" true }}{{ end -}}
{{- $_ := set $config "checkpoint" $checkpoint -}}
{{- toYaml $config }}
{{- end -}}

{{/* The trainer's pod template; the Job's name carries its hash so a changed template replaces the Job. */}}
{{- define "browser-rl.trainerPod" -}}
{{- $c := dict "root" . "component" "trainer" "values" .Values.trainer "client" true -}}
{{- $v := .Values.trainer -}}
{{- $hub := eq (include "browser-rl.modelKind" .) "hub" -}}
{{- $prepare := and .Values.policyVolume.enabled .Values.policyVolume.prepareOwnership -}}
metadata:
  labels:
    {{- include "browser-rl.podLabels" $c | trim | nindent 4 }}
  annotations:
    {{- with (include "browser-rl.podAnnotations" (dict "checksum" (include "browser-rl.trainerConfig" . | sha256sum) "values" $v) | trim) }}{{ . | nindent 4 }}{{- end }}
    # A bumped trainer.attempt starts a new Job (the name hashes this template).
    browser-rl.io/attempt: {{ $v.attempt | quote }}
    # The cluster autoscaler must not remove the node mid-step; a node drain SIGTERMs the
    # trainer, which finishes the step and saves a checkpoint first.
    cluster-autoscaler.kubernetes.io/safe-to-evict: "false"
spec:
  serviceAccountName: {{ include "browser-rl.componentName" $c }}
  automountServiceAccountToken: true
  enableServiceLinks: false
  # Never: a failed pod is replaced (resuming from its checkpoint) under the Job's
  # podFailurePolicy, so evictions do not use up backoffLimit.
  restartPolicy: Never
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- if gt (int $v.nodes) 1 }}
  # <job>-<index>.<this Service>: how the pods of the Indexed Job find each other.
  subdomain: {{ include "browser-rl.componentName" $c }}
  {{- end }}
  securityContext:
    {{- include "browser-rl.podSecurityContext" . | nindent 4 }}
  {{- with (include "browser-rl.imagePullSecrets" .) }}{{ . | nindent 2 }}{{- end }}
  {{- with (include "browser-rl.scheduling" $v) }}{{ . | nindent 2 }}{{- end }}
  {{- if or $hub $prepare }}
  initContainers:
    {{- if $prepare }}
    {{- include "browser-rl.preparePolicyVolume" (dict "root" . "image" $v.image) | nindent 4 }}
    {{- end }}
    {{- if $hub }}
    {{- include "browser-rl.fetchModelContainer" (dict "root" . "image" $v.image "under" "/checkpoints/models" "volume" "checkpoints" "mount" "/checkpoints") | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    - name: trainer
      image: {{ include "browser-rl.image" (dict "root" . "image" $v.image) }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- include "browser-rl.trainerLaunch" . | trim | nindent 6 }}
      env:
        - name: HOME
          value: /tmp/home
        - name: HF_HOME
          value: /checkpoints/hf
        - name: HF_HUB_OFFLINE
          value: "1"
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef: {fieldPath: metadata.namespace}
        {{- with (include "browser-rl.secretEnv" (dict "root" . "hf" false "api" .Values.inference.enabled) | trim) }}{{ . | nindent 8 }}{{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ $v.metricsPort }}
          protocol: TCP
        {{- if gt (int $v.nodes) 1 }}
        - name: rendezvous
          containerPort: {{ $v.rendezvousPort }}
          protocol: TCP
        {{- end }}
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
        {{- include "browser-rl.resourcesWithGPUs" (dict "resources" $v.resources "gpus" $v.gpus "name" $v.gpuResource) | nindent 8 }}
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
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
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
        sizeLimit: {{ $v.shmSize }}
    {{- if .Values.policyVolume.enabled }}
    - name: policy
      persistentVolumeClaim:
        claimName: {{ include "browser-rl.policyClaim" . }}
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* resources with the GPU resource (trainer.gpuResource, ...) added to requests and limits when gpus > 0. */}}
{{- define "browser-rl.resourcesWithGPUs" -}}
{{- $r := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $r "limits" (merge (dict .name (int .gpus)) (default dict $r.limits)) -}}
{{- $_ := set $r "requests" (merge (dict .name (int .gpus)) (default dict $r.requests)) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}


{{/* The trainer container's command: the single-process entry, or torchrun around it with one
process per GPU (trainer.gpus > 1) on every pod of the Indexed Job (trainer.nodes > 1). Pods
meet at pod 0 (<job>-0.<Service>; the Job's name is the pod's hostname without its index) by
torch's c10d rendezvous, which restarts the whole group when a process or pod fails. */}}
{{- define "browser-rl.trainerLaunch" -}}
{{- $v := .Values.trainer -}}
{{- if gt (int $v.nodes) 1 -}}
{{- if and .Values.inference.enabled (eq .Values.inference.weightTransfer.mode "nccl") }}
{{- fail "inference.weightTransfer.mode nccl with trainer.nodes > 1: the vLLM workers would not know which trainer pod holds rank 0; use sharedVolume or upload" }}
{{- end }}
{{- $svc := include "browser-rl.componentName" (dict "root" . "component" "trainer") -}}
command: ["sh", "-c"]
args:
  - >-
    exec torchrun --nnodes={{ $v.nodes }} --nproc-per-node={{ max 1 (int $v.gpus) }}
    --rdzv-backend=c10d --rdzv-id={{ .Release.Name }}-trainer
    --rdzv-endpoint="${HOSTNAME%-*}-0.{{ $svc }}:{{ $v.rendezvousPort }}"
    --max-restarts={{ $v.maxRestarts }}
    -m services.trainer train --config /etc/browser-rl/trainer.yaml
{{- else if gt (int $v.gpus) 1 }}
command: ["torchrun"]
args: ["--standalone", "--nproc-per-node={{ $v.gpus }}", "--max-restarts={{ $v.maxRestarts }}",
       "-m", "services.trainer", "train", "--config", "/etc/browser-rl/trainer.yaml"]
{{- else }}
args: ["train", "--config", "/etc/browser-rl/trainer.yaml"]
{{- end }}
{{- end -}}
