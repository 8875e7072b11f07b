{{/* Names, labels and the upstream list shared by every template. */}}
{{- define "kubeforge-llm-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeforge-llm-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else if contains (include "kubeforge-llm-gateway.name" .) .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "kubeforge-llm-gateway.name" .) | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kubeforge-llm-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeforge-llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubeforge-llm-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubeforge-llm-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeforge
{{- end }}

{{- define "kubeforge-llm-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The environment variable that carries an upstream's own API key. */}}
{{- define "kubeforge-llm-gateway.keyEnv" -}}
{{- printf "UPSTREAM_%s_API_KEY" (. | upper | replace "-" "_") }}
{{- end }}

{{/* upstreams.yaml for KUBEFORGE_GATEWAY_CONFIG: the bundled vLLM first, then the listed ones. */}}
{{- define "kubeforge-llm-gateway.upstreams" -}}
{{- $list := list }}
{{- if .Values.vllm.enabled }}
{{- $vllm := dict "name" "vllm" "url" (printf "http://%s-vllm:8000" (include "kubeforge-llm-gateway.fullname" .)) "base_models" (list (default .Values.vllm.model .Values.vllm.servedModelName)) "max_in_flight" (int .Values.vllm.maxInFlight) }}
{{- $adapters := list }}
{{- range .Values.vllm.loraModules }}{{ $adapters = append $adapters .name }}{{ end }}
{{- if $adapters }}{{ $_ := set $vllm "models" $adapters }}{{ end }}
{{- if .Values.vllm.apiKeySecret.name }}{{ $_ := set $vllm "api_key_env" (include "kubeforge-llm-gateway.keyEnv" "vllm") }}{{ end }}
{{- $list = append $list $vllm }}
{{- end }}
{{- range .Values.upstreams }}
{{- $entry := dict "name" .name "url" .url }}
{{- with .models }}{{ $_ := set $entry "models" . }}{{ end }}
{{- with .baseModels }}{{ $_ := set $entry "base_models" . }}{{ end }}
{{- with .maxInFlight }}{{ $_ := set $entry "max_in_flight" (int .) }}{{ end }}
{{- if and .apiKeySecret .apiKeySecret.name }}{{ $_ := set $entry "api_key_env" (include "kubeforge-llm-gateway.keyEnv" .name) }}{{ end }}
{{- $list = append $list $entry }}
{{- end }}
{{- toYaml (dict "upstreams" $list) }}
{{- end }}
