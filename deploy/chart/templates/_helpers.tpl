{{/*
Names. Kubernetes names and label values stop at 63 characters, so every name made
here is cut there (and a trailing "-" left by the cut is dropped).
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "jetbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: fullnameOverride, or the release name (with the chart's name unless it already holds it). */}}
{{- define "jetbridge.fullname" -}}
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

{{/*
A component's object name: "<fullname>-<component>" in 63 characters. The full name is cut,
never the component, so two components never end up with the same name.
Call with (list $ "component").
*/}}
{{- define "jetbridge.componentName" -}}
{{- $top := index . 0 -}}
{{- $component := index . 1 -}}
{{- $prefix := include "jetbridge.fullname" $top | trunc (int (sub 62 (len $component))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix $component -}}
{{- end -}}

{{- define "jetbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Call with (list $ "component"). Never managed-by=jetbridge: that label marks step pods. */}}
{{- define "jetbridge.labels" -}}
{{- $top := index . 0 -}}
helm.sh/chart: {{ include "jetbridge.chart" $top }}
{{ include "jetbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ $top.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $top.Release.Service }}
app.kubernetes.io/part-of: jetbridge
{{- with $top.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that pick a component's pods. Call with (list $ "component"). */}}
{{- define "jetbridge.selectorLabels" -}}
{{- $top := index . 0 -}}
app.kubernetes.io/name: {{ include "jetbridge.name" $top }}
app.kubernetes.io/instance: {{ $top.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* JetBridge's image reference. */}}
{{- define "jetbridge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "jetbridge.serviceAccountName" -}}
{{- default (include "jetbridge.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The trigger functions' ServiceAccount: one without any Role, or serviceAccount.name when the chart creates none. */}}
{{- define "jetbridge.triggerServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "jetbridge.componentName" (list . "trigger") -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "jetbridge.brokerName" -}}
{{- default (include "jetbridge.fullname" .) .Values.eventing.broker.name -}}
{{- end -}}

{{/* Where functions post events: the multi-tenant Broker's ingress for this namespace and Broker. */}}
{{- define "jetbridge.brokerUrl" -}}
{{- default (printf "http://broker-ingress.knative-eventing.svc.cluster.local/%s/%s" .Release.Namespace (include "jetbridge.brokerName" .)) .Values.eventing.brokerUrl -}}
{{- end -}}

{{- define "jetbridge.storeClaimName" -}}
{{- default (include "jetbridge.componentName" (list . "artifacts")) .Values.store.existingClaim -}}
{{- end -}}

{{- define "jetbridge.postgresqlName" -}}
{{- include "jetbridge.componentName" (list . "postgresql") -}}
{{- end -}}

{{- define "jetbridge.postgresqlSecretName" -}}
{{- default (include "jetbridge.postgresqlName" .) .Values.postgresql.auth.existingSecret -}}
{{- end -}}

{{/* The Secret and key holding an external database's URL. */}}
{{- define "jetbridge.databaseSecretName" -}}
{{- default (include "jetbridge.componentName" (list . "database")) .Values.externalDatabase.existingSecret -}}
{{- end -}}

{{- define "jetbridge.databaseSecretKey" -}}
{{- if .Values.externalDatabase.existingSecret -}}
{{- .Values.externalDatabase.existingSecretKey -}}
{{- else -}}
database-url
{{- end -}}
{{- end -}}

{{/* The Secret of webhook secrets: one key per pipeline. */}}
{{- define "jetbridge.webhookSecretName" -}}
{{- default (include "jetbridge.componentName" (list . "webhooks")) .Values.webhooks.existingSecret -}}
{{- end -}}

{{/*
A generated secret that survives upgrades: the value already in the cluster's Secret if
there is one, else a new random one. Call with (list $ "secret-name" "key").
*/}}
{{- define "jetbridge.keptSecret" -}}
{{- $top := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $top.Release.Namespace (index . 1) -}}
{{- if and $existing (hasKey $existing.data (index . 2)) -}}
{{- index $existing.data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/*
The database's environment: JETBRIDGE_DATABASE_URL, from the external URL's Secret, or
built from the bundled Postgres' password (Kubernetes expands $(DATABASE_PASSWORD)).
*/}}
{{- define "jetbridge.databaseEnv" -}}
{{- if .Values.postgresql.enabled -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "jetbridge.postgresqlSecretName" . }}
      key: {{ .Values.postgresql.auth.secretKey }}
- name: JETBRIDGE_DATABASE_URL
  value: {{ printf "postgresql+pg8000://%s:$(DATABASE_PASSWORD)@%s:5432/%s" .Values.postgresql.auth.username (include "jetbridge.postgresqlName" .) .Values.postgresql.auth.database | quote }}
{{- else -}}
- name: JETBRIDGE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "jetbridge.databaseSecretName" . }}
      key: {{ include "jetbridge.databaseSecretKey" . }}
{{- end -}}
{{- end -}}

{{/*
Settings every function reads (shared/settings.py: each JETBRIDGE_* variable is a field).
Call with (list $ mountsStore).
*/}}
{{- define "jetbridge.functionEnv" -}}
{{- $top := index . 0 -}}
{{- $v := $top.Values -}}
- name: JETBRIDGE_RUNTIME
  value: kubernetes
- name: JETBRIDGE_NAMESPACE
  value: {{ $top.Release.Namespace | quote }}
{{ include "jetbridge.databaseEnv" $top }}
- name: JETBRIDGE_EVENT_SINK
  value: {{ include "jetbridge.brokerUrl" $top | quote }}
- name: JETBRIDGE_DATA_DIR
  value: /tmp/jetbridge
- name: JETBRIDGE_STORE_CLAIM
  value: {{ include "jetbridge.storeClaimName" $top | quote }}
- name: JETBRIDGE_STORE_ACCESS_MODE
  value: {{ $v.store.accessMode | quote }}
- name: JETBRIDGE_RESOURCE_IMAGE
  value: {{ default (include "jetbridge.image" $top) $v.steps.resourceImage | quote }}
- name: JETBRIDGE_STEP_TIMEOUT_SECONDS
  value: {{ $v.steps.timeoutSeconds | int64 | quote }}
- name: JETBRIDGE_STEP_REQUESTS
  value: {{ $v.steps.requests | toJson | quote }}
- name: JETBRIDGE_STEP_LIMITS
  value: {{ $v.steps.limits | toJson | quote }}
- name: JETBRIDGE_NODE_SELECTOR
  value: {{ $v.steps.nodeSelector | toJson | quote }}
- name: JETBRIDGE_TOLERATIONS
  value: {{ $v.steps.tolerations | toJson | quote }}
- name: JETBRIDGE_IMAGE_PULL_SECRETS
  value: {{ $v.steps.imagePullSecrets | toJson | quote }}
- name: JETBRIDGE_POD_RETENTION_SECONDS
  value: {{ $v.steps.podRetentionSeconds | int64 | quote }}
- name: JETBRIDGE_REAPER_GRACE_SECONDS
  value: {{ $v.eventing.reaperGraceSeconds | int64 | quote }}
- name: JETBRIDGE_LOG_LEVEL
  value: {{ $v.functions.logLevel | quote }}
- name: JETBRIDGE_LOG_STORE
  value: {{ $v.logs.store | quote }}
{{- if eq $v.logs.store "gcs" }}
- name: JETBRIDGE_LOG_BUCKET
  value: {{ $v.logs.bucket | quote }}
- name: JETBRIDGE_LOG_PREFIX
  value: {{ $v.logs.prefix | quote }}
{{- end }}
{{- if index . 1 }}
- name: JETBRIDGE_STORE_ROOT
  value: /var/lib/jetbridge/store
- name: JETBRIDGE_LOG_DIR
  value: /var/lib/jetbridge/store/logs
{{- end }}
{{- range $name, $value := $v.functions.settings }}
- name: {{ printf "JETBRIDGE_%s" (upper $name) }}
  {{- /* YAML numbers reach templates as floats: a whole one is written as an integer. */}}
  value: {{ ternary ($value | int64 | toString) ($value | toString) (and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value)) | quote }}
{{- end }}
{{- end -}}

{{/* The container securityContext of every JetBridge container: the "restricted" Pod Security Standard. */}}
{{- define "jetbridge.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Cloud SQL Auth Proxy container, when externalDatabase.cloudSqlProxy.enabled. */}}
{{- define "jetbridge.cloudSqlProxy" -}}
{{- $p := .Values.externalDatabase.cloudSqlProxy -}}
- name: cloud-sql-proxy
  image: {{ $p.image | quote }}
  args:
    - --port=5432
    - --address=127.0.0.1
    - --structured-logs
    {{- if $p.privateIp }}
    - --private-ip
    {{- end }}
    - {{ $p.instanceConnectionName | quote }}
  resources:
    {{- toYaml $p.resources | nindent 4 }}
  securityContext:
    {{- include "jetbridge.containerSecurityContext" . | nindent 4 }}
{{- end -}}

{{/*
A function as a Knative Service. Call with a dict:
  top: $, component, source, target, signature, serviceAccount, values (the function's
  values), mountsStore (bool), public (bool), webhookSecrets (bool).
*/}}
{{- define "jetbridge.knativeService" -}}
{{- $top := .top -}}
{{- $v := .values -}}
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {{ include "jetbridge.componentName" (list $top .component) }}
  namespace: {{ $top.Release.Namespace }}
  labels:
    {{- include "jetbridge.labels" (list $top .component) | nindent 4 }}
    {{- if not .public }}
    networking.knative.dev/visibility: cluster-local
    {{- end }}
spec:
  template:
    metadata:
      labels:
        {{- include "jetbridge.selectorLabels" (list $top .component) | nindent 8 }}
      annotations:
        autoscaling.knative.dev/min-scale: {{ default 0 $v.minScale | quote }}
        autoscaling.knative.dev/max-scale: {{ $v.maxScale | quote }}
        {{- with $top.Values.functions.annotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      containerConcurrency: {{ default 0 $v.containerConcurrency }}
      timeoutSeconds: {{ $v.timeoutSeconds }}
      {{- with $top.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $top.Values.functions.podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: function
          image: {{ include "jetbridge.image" $top | quote }}
          imagePullPolicy: {{ $top.Values.image.pullPolicy }}
          ports:
            - name: http1
              containerPort: 8080
          env:
            - name: FUNCTION_SOURCE
              value: {{ .source }}
            - name: FUNCTION_TARGET
              value: {{ .target }}
            - name: FUNCTION_SIGNATURE_TYPE
              value: {{ .signature }}
            {{- include "jetbridge.functionEnv" (list $top .mountsStore) | nindent 12 }}
            {{- if .webhookSecrets }}
            - name: JETBRIDGE_WEBHOOK_SECRETS_DIR
              value: /etc/jetbridge/webhook-secrets
            - name: JETBRIDGE_WEBHOOK_MAX_BYTES
              value: {{ $top.Values.webhooks.maxBytes | int64 | quote }}
            {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "jetbridge.containerSecurityContext" $top | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .mountsStore }}
            - name: store
              mountPath: /var/lib/jetbridge/store
            {{- end }}
            {{- if .webhookSecrets }}
            - name: webhook-secrets
              mountPath: /etc/jetbridge/webhook-secrets
              readOnly: true
            {{- end }}
        {{- if $top.Values.externalDatabase.cloudSqlProxy.enabled }}
        {{- include "jetbridge.cloudSqlProxy" $top | nindent 8 }}
        {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- if .mountsStore }}
        - name: store
          persistentVolumeClaim:
            claimName: {{ include "jetbridge.storeClaimName" $top }}
        {{- end }}
        {{- if .webhookSecrets }}
        # One file per pipeline, re-read on every delivery: a rotated secret counts at once.
        - name: webhook-secrets
          secret:
            secretName: {{ include "jetbridge.webhookSecretName" $top }}
        {{- end }}
{{- end -}}

{{/*
Labels of the monitoring objects: the chart's, the extra ones given (the dashboard's label
for Grafana's sidecar), then monitoring.labels (e.g. release: prometheus, for
kube-prometheus-stack's selectors); where two set a key, the first wins.
Call with (list $ extraLabelsDict).
*/}}
{{- define "jetbridge.monitoringLabels" -}}
{{- $top := index . 0 -}}
{{- $labels := include "jetbridge.labels" (list $top "monitoring") | fromYaml -}}
{{- $labels = merge $labels (index . 1) $top.Values.monitoring.labels -}}
{{- toYaml $labels -}}
{{- end -}}
