{{/* The inference service's config file (services/inference/config.py InferenceConfig). */}}
{{- define "browser-rl.inferenceConfig" -}}
{{- $v := .Values.inference -}}
{{- $config := dict
    "model" (include "browser-rl.inferenceModelPath" .)
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
    "max_loras" (int $v.lora.maxLoras)
    "max_cpu_loras" (max 4 (int $v.lora.maxLoras))
    "update_dir" (ternary "/policy/inference" "/tmp/updates" .Values.policyVolume.enabled)
    "extra_vllm_args" $v.extraArgs
-}}
{{- if eq $v.weightTransfer.mode "nccl" }}{{ $_ := set $config "weight_transfer_backend" "nccl" }}{{ end -}}
{{- if include "browser-rl.secretsEnabled" . }}{{ $_ := set $config "api_key_env" "VLLM_API_KEY" }}{{ end -}}
{{- toYaml $config }}
{{- end -}}

{{/* Where the served model lives in the pod: a path as given, or /models/<hub id> (fetched by
the init container). */}}
{{- define "browser-rl.inferenceModelPath" -}}
{{- if hasPrefix "/" .Values.inference.model -}}
{{- .Values.inference.model -}}
{{- else -}}
{{- printf "/models/%s" .Values.inference.model -}}
{{- end -}}
{{- end -}}
