{{- define "apns-worker.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "apns-worker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "apns-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apns-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "apns-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "apns-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "apns-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "apns-worker.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secrets to mount: every distinct secretName of keys and certificates. */}}
{{- define "apns-worker.secretNames" -}}
{{- $names := list -}}
{{- range $app, $a := .Values.apps -}}
{{- range $a.keys -}}{{- $names = append $names .secretName -}}{{- end -}}
{{- with $a.certificate -}}{{- $names = append $names .secretName -}}{{- end -}}
{{- end -}}
{{- $names | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/* The worker's TOML config. Values are written with toJson, whose strings, numbers,
     booleans and arrays are also valid TOML. */}}
{{- define "apns-worker.config" -}}
[broker]
heartbeat_secs = {{ .Values.broker.heartbeatSecs }}
prefetch = {{ .Values.broker.prefetch }}

[queues]
jobs = {{ .Values.queues.jobs | toJson }}
jobs_type = {{ .Values.queues.jobsType | toJson }}
delivery_limit = {{ .Values.queues.deliveryLimit }}
dead_letter_exchange = {{ .Values.queues.deadLetterExchange | toJson }}
dead_letter_queue = {{ .Values.queues.deadLetterQueue | toJson }}
cleanup_exchange = {{ .Values.queues.cleanupExchange | toJson }}
cleanup_queue = {{ .Values.queues.cleanupQueue | toJson }}
retry_prefix = {{ .Values.queues.retryPrefix | toJson }}
declare = {{ .Values.queues.declare }}

[retry]
max_attempts = {{ .Values.retry.maxAttempts }}
base_delay_ms = {{ .Values.retry.baseDelayMs | int64 }}
max_delay_ms = {{ .Values.retry.maxDelayMs | int64 }}
park_delay_ms = {{ .Values.retry.parkDelayMs | int64 }}

[worker]
ack_batch = {{ .Values.worker.ackBatch }}
ack_flush_ms = {{ .Values.worker.ackFlushMs }}
drain_secs = {{ .Values.worker.drainSecs }}
max_job_bytes = {{ .Values.worker.maxJobBytes | int64 }}
dedupe_capacity = {{ .Values.worker.dedupeCapacity | int64 }}

[circuit]
open_ms = {{ .Values.circuit.openMs | int64 }}
max_open_ms = {{ .Values.circuit.maxOpenMs | int64 }}

[admin]
listen = {{ printf "0.0.0.0:%v" .Values.admin.port | toJson }}

[apns]
request_timeout_ms = {{ .Values.apns.requestTimeoutMs | int64 }}
send_timeout_ms = {{ .Values.apns.sendTimeoutMs | int64 }}
max_resends = {{ .Values.apns.maxResends }}
ping_interval_secs = {{ .Values.apns.pingIntervalSecs }}
ping_timeout_secs = {{ .Values.apns.pingTimeoutSecs }}
token_refresh_secs = {{ .Values.apns.tokenRefreshSecs }}
{{- range $name, $a := .Values.apps }}

[apps.{{ $name }}]
endpoint = {{ required (printf "apps.%s.endpoint is required" $name) $a.endpoint | toJson }}
topics = {{ default (list) $a.topics | toJson }}
{{- with $a.defaultTopic }}
default_topic = {{ . | toJson }}
{{- end }}
connections = {{ default 2 $a.connections }}
{{- with $a.maxStreamsPerConnection }}
max_streams_per_connection = {{ . }}
{{- end }}
{{- if $a.keys }}
team_id = {{ required (printf "apps.%s.teamId is required with keys" $name) $a.teamId | toJson }}
{{- range $a.keys }}
[[apps.{{ $name }}.keys]]
key_id = {{ .keyId | toJson }}
key_file = {{ printf "/etc/apns-worker/secrets/%s/%s" .secretName (default "AuthKey.p8" .secretKey) | toJson }}
topics = {{ default (list) .topics | toJson }}
{{- end }}
{{- else if $a.certificate }}
[apps.{{ $name }}.certificate]
{{- with $a.certificate }}
{{- if .pkcs12Key }}
pkcs12_file = {{ printf "/etc/apns-worker/secrets/%s/%s" .secretName .pkcs12Key | toJson }}
{{- with .passwordKey }}
password_file = {{ printf "/etc/apns-worker/secrets/%s/%s" $a.certificate.secretName . | toJson }}
{{- end }}
{{- else }}
cert_file = {{ printf "/etc/apns-worker/secrets/%s/%s" .secretName (default "tls.crt" .certKey) | toJson }}
key_file = {{ printf "/etc/apns-worker/secrets/%s/%s" .secretName (default "tls.key" .keyKey) | toJson }}
{{- end }}
{{- end }}
{{- else }}
{{- fail (printf "apps.%s needs keys (token auth) or certificate" $name) }}
{{- end }}
{{- end }}
{{- end -}}
