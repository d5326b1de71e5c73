{{/* Labels every object of this chart carries; wait-rollout and smoke-test select on them. */}}
{{- define "mybinder.labels" -}}
app.kubernetes.io/part-of: mybinder
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "mybinder.selector" -}}
app.kubernetes.io/part-of: mybinder
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Placement shared by the chart's own workloads. */}}
{{- define "mybinder.placement" -}}
{{- with .Values.global.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.global.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
