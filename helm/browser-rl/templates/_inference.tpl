{{/* The inference service's config file (services/inference/config.py InferenceConfig). */}}
{{- define "browser-rl.inferenceConfig" -}}
{{- $v := .Values.inference -}}
{{- $args := $v.extraArgs -}}
{{- /* Rollouts k steps ahead pin episodes to their version: k + 1 adapters kept, k + 2 in a batch. */ -}}
{{- $ahead := int (default 0 (default dict .Values.trainer.config.rollout).max_staleness) -}}
{{- if gt (int $v.gpus) 1 }}{{ $args = concat (list "--tensor-parallel-size" (toString $v.gpus)) $args }}{{ end -}}
{{- $config := dict
    "model" (include "browser-rl.modelPath" (dict "root" . "under" "/models"))
    "served_model_name" $v.servedModelName
    "host" "0.0.0.0"
    "port" (int $v.port)
    "dtype" $v.dtype
    "max_model_len" (int $v.maxModelLen)
    "gpu_memory_utilization" $v.gpuMemoryUtilization
    "enable_prefix_caching" $v.enablePrefixCaching
    "enforce_eager" (eq (int $v.gpus) 0)
    "enable_lora" $v.lora.enabled
    "max_lora_rank" (int $v.lora.maxRank)
    "max_loras" (max (int $v.lora.maxLoras) (add $ahead 2))
    "max_cpu_loras" (max 4 (int $v.lora.maxLoras) (add $ahead 3))
    "keep_adapter_versions" (max 2 (add $ahead 1))
    "update_dir" (ternary "/policy/inference" "/tmp/updates" .Values.policyVolume.enabled)
    "extra_vllm_args" $args
-}}
{{- if eq $v.weightTransfer.mode "nccl" }}{{ $_ := set $config "weight_transfer_backend" "nccl" }}{{ end -}}
{{- if .Values.secrets.apiKey.enabled }}{{ $_ := set $config "api_key_env" "VLLM_API_KEY" }}{{ end -}}
{{- toYaml $config }}
{{- end -}}
