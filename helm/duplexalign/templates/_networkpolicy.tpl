{{/* Egress rules shared by the NetworkPolicies (networkpolicies.yaml). */}}

{{- define "duplexalign.np.s3" -}}
- to:
    {{- include "duplexalign.cidrPeers" .Values.s3.egress.cidrs | nindent 4 }}
  ports:
    {{- range .Values.s3.egress.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{- define "duplexalign.np.consent" -}}
- to:
    {{- include "duplexalign.cidrPeers" .Values.consent.egress.cidrs | nindent 4 }}
  ports:
    - port: {{ .Values.consent.egress.port }}
      protocol: TCP
{{- end -}}

{{- define "duplexalign.np.kfp" -}}
- to:
    {{- include "duplexalign.namespacePeer" .Values.kfp.namespace | nindent 4 }}
  ports:
    {{- range .Values.kfp.apiPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{- define "duplexalign.np.apiServer" -}}
- to:
    {{- include "duplexalign.cidrPeers" .Values.networkPolicy.apiServer.cidrs | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.apiServer.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{- define "duplexalign.np.redis" -}}
{{- $r := .Values.feast.redis -}}
- to:
    {{- if and $r.inChart.enabled (not $r.host) }}
    - podSelector:
        matchLabels:
          {{- include "duplexalign.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
    {{- else }}
    {{- include "duplexalign.cidrPeers" $r.egress.cidrs | nindent 4 }}
    {{- end }}
  ports:
    - port: {{ $r.port }}
      protocol: TCP
{{- end -}}
