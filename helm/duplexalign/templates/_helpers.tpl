{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "duplexalign.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name: the release name when it already says "duplexalign". */}}
{{- define "duplexalign.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>"; call with (dict "ctx" $ "component" "mlflow"). */}}
{{- define "duplexalign.componentName" -}}
{{- printf "%s-%s" (include "duplexalign.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels --------------------------------------------------------------------------------- */}}

{{- define "duplexalign.selectorLabels" -}}
app.kubernetes.io/name: {{ include "duplexalign.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "duplexalign.labels" -}}
{{ include "duplexalign.selectorLabels" . }}
app.kubernetes.io/part-of: duplexalign
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images --------------------------------------------------------------------------------- */}}

{{/* The component (CPU) image. */}}
{{- define "duplexalign.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{- printf "%s/%s@%s" $i.registry $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $i.registry $i.repository $i.tag -}}
{{- end -}}
{{- end -}}

{{/* The CUDA image (the KServe predictor). */}}
{{- define "duplexalign.cudaImage" -}}
{{- $i := .Values.image -}}
{{- if $i.cudaDigest -}}
{{- printf "%s/%s@%s" $i.registry $i.cudaRepository $i.cudaDigest -}}
{{- else -}}
{{- printf "%s/%s:%s" $i.registry $i.cudaRepository $i.tag -}}
{{- end -}}
{{- end -}}

{{- define "duplexalign.mlflowImage" -}}
{{- if .Values.mlflow.image.repository -}}
{{- printf "%s:%s" .Values.mlflow.image.repository .Values.mlflow.image.tag -}}
{{- else -}}
{{- include "duplexalign.image" . -}}
{{- end -}}
{{- end -}}

{{- define "duplexalign.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Restricted Pod Security ------------------------------------------------------------------ */}}

{{- define "duplexalign.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "duplexalign.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Endpoints -------------------------------------------------------------------------------- */}}

{{- define "duplexalign.s3Url" -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.s3.secure) .Values.s3.endpoint -}}
{{- end -}}

{{- define "duplexalign.mlflowUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "duplexalign.componentName" (dict "ctx" . "component" "mlflow")) .Release.Namespace .Values.mlflow.port -}}
{{- end -}}

{{/* host:port of the Redis online store (in-chart when no external host is given). */}}
{{- define "duplexalign.redisAddress" -}}
{{- if .Values.feast.redis.host -}}
{{- printf "%s:%v" .Values.feast.redis.host .Values.feast.redis.port -}}
{{- else -}}
{{- printf "%s.%s.svc:%v" (include "duplexalign.componentName" (dict "ctx" . "component" "redis")) .Release.Namespace .Values.feast.redis.port -}}
{{- end -}}
{{- end -}}

{{/* Feast's connection string (no password: that comes from the env at run time). */}}
{{- define "duplexalign.redisConnection" -}}
{{- include "duplexalign.redisAddress" . -}}
{{- if .Values.feast.redis.ssl -}},ssl=true{{- end -}}
{{- end -}}

{{/* Env ------------------------------------------------------------------------------------- */}}

{{/* The duplexalign S3 credentials (the names the configuration reads). */}}
{{- define "duplexalign.s3Env" -}}
- name: DUPLEXALIGN_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3 }}
      key: access-key
- name: DUPLEXALIGN_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3 }}
      key: secret-key
{{- end -}}

{{/* The same credentials under boto3's names (MLflow's artifact proxy, Feast's S3 registry). */}}
{{- define "duplexalign.awsEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3 }}
      key: access-key
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3 }}
      key: secret-key
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ include "duplexalign.s3Url" . | quote }}
{{- end -}}

{{/* The platform configuration, mounted read-only. */}}
{{- define "duplexalign.configEnv" -}}
- name: DUPLEXALIGN_CONFIG
  value: /etc/duplexalign/config.yaml
- name: DUPLEXALIGN_PROFILE
  value: production
- name: HOME
  value: /tmp
{{- end -}}

{{- define "duplexalign.configVolume" -}}
- name: platform-config
  configMap:
    name: {{ .Values.platformConfig.name }}
    items:
      - key: config.yaml
        path: config.yaml
{{- end -}}

{{- define "duplexalign.configMount" -}}
- name: platform-config
  mountPath: /etc/duplexalign
  readOnly: true
{{- end -}}

{{/* NetworkPolicy peers ------------------------------------------------------------------ */}}

{{/* "to" peers for a list of CIDRs; any address when the list is empty. */}}
{{- define "duplexalign.cidrPeers" -}}
{{- if . }}
{{- range . }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- else }}
- ipBlock:
    cidr: 0.0.0.0/0
- ipBlock:
    cidr: ::/0
{{- end }}
{{- end -}}

{{- define "duplexalign.namespacePeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end -}}

{{- define "duplexalign.taskPodSelector" -}}
podSelector:
  matchLabels:
    pipelines.kubeflow.org/v2_component: "true"
{{- end -}}
