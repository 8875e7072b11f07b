{{/* Refuse contradictory values with a message that says what to change. Included by the Deployment. */}}
{{- define "kubeforge-serving.validate" -}}
{{- $gpu := .Values.gpu }}
{{- if and $gpu.enabled (le (int $gpu.count) 0) }}
{{- fail "gpu.enabled is true but gpu.count is 0: set gpu.count to the GPUs each pod needs" }}
{{- end }}
{{- if and (not $gpu.enabled) (gt (int $gpu.count) 0) }}
{{- fail (printf "gpu.count is %d but gpu.enabled is false: enable the GPU block or set gpu.count to 0" (int $gpu.count)) }}
{{- end }}
{{- if and (not $gpu.enabled) $gpu.product }}
{{- fail (printf "gpu.product is %q but gpu.enabled is false: enable the GPU block or clear gpu.product" $gpu.product) }}
{{- end }}
{{- if and .Values.image.tag .Values.image.digest }}
{{- fail "image.tag and image.digest are both set: use one (a digest pins the exact image)" }}
{{- end }}
{{- $hpa := .Values.autoscaling }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if $pdb.enabled }}
{{- $replicas := ternary (int $hpa.minReplicas) (int .Values.replicaCount) $hpa.enabled }}
{{- if and (ne (toString $pdb.minAvailable) "") (ne (toString $pdb.maxUnavailable) "") }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if and (ne (toString $pdb.minAvailable) "") (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) $replicas) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) with %d replica(s) would block every eviction (node drains hang): raise replicas or lower minAvailable" (int $pdb.minAvailable) $replicas) }}
{{- end }}
{{- if and (eq (toString $pdb.minAvailable) "") (eq (toString $pdb.maxUnavailable) "0") }}
{{- fail "podDisruptionBudget.maxUnavailable 0 would block every eviction (node drains hang)" }}
{{- end }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.allowedNamespaces) (not .Values.networkPolicy.allowedPodLabels) }}
{{- fail "networkPolicy.enabled with no allowedNamespaces and no allowedPodLabels would block every client" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.enabled needs ingress.host" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs at least one httpRoute.parentRefs entry (the Gateway)" }}
{{- end }}
{{- end }}
