{{/* Names and labels shared by every template. */}}
{{- define "kubeforge-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeforge-serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "kubeforge-serving.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "kubeforge-serving.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kubeforge-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeforge-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubeforge-serving.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubeforge-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeforge
{{- end }}

{{- define "kubeforge-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeforge-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubeforge-serving.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The node label that carries the GPU product, per labelling convention. */}}
{{- define "kubeforge-serving.gpuProductLabel" -}}
{{- $presets := dict "gfd" "nvidia.com/gpu.product" "gke" "cloud.google.com/gke-accelerator" "eks" "k8s.amazonaws.com/accelerator" "aks" "accelerator" }}
{{- get $presets .Values.gpu.productLabelPreset }}
{{- end }}
