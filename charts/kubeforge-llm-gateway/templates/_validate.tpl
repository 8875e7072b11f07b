{{/* Refuse values that would run the gateway without keys or without anywhere to send requests. */}}
{{- define "kubeforge-llm-gateway.validate" -}}
{{- if not (and .Values.tenancy.keysSecret .Values.tenancy.tenantsConfigMap) }}
{{- fail "tenancy.keysSecret and tenancy.tenantsConfigMap must be set: the gateway never runs without API keys (write them with `kubeforge tenant key add`; manifests/llm/)" }}
{{- end }}
{{- if and (not .Values.vllm.enabled) (not .Values.upstreams) }}
{{- fail "no upstream: enable vllm or list upstreams (name, url)" }}
{{- end }}
{{- if and .Values.vllm.enabled (not .Values.vllm.model) }}
{{- fail "vllm.enabled needs vllm.model (a Hugging Face id or a path in the model cache)" }}
{{- end }}
{{- if and .Values.vllm.enabled (lt (int .Values.vllm.gpuCount) 1) }}
{{- fail "vllm.gpuCount must be at least 1: vLLM runs on GPUs" }}
{{- end }}
{{- range .Values.upstreams }}
{{- if not (and .name .url) }}
{{- fail "every upstreams entry needs a name and a url" }}
{{- end }}
{{- if eq .name "vllm" }}{{ if $.Values.vllm.enabled }}
{{- fail "the upstream name vllm is the bundled vLLM's; rename the listed one" }}
{{- end }}{{ end }}
{{- end }}
{{- if and .Values.image.tag .Values.image.digest }}
{{- fail "image.tag and image.digest are both set: use one" }}
{{- end }}
{{- if lt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount must be at least 1" }}
{{- end }}
{{- end }}
