{{- define "apns-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "apns-worker.fullname" -}}
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

{{/* A valid volume name (a DNS label) for a Secret's name, which may hold dots:
     readable, and unique by a hash of the name. */}}
{{- define "apns-worker.volumeName" -}}
{{- printf "s-%s-%s" (. | replace "." "-" | lower | trunc 40 | trimSuffix "-") (sha256sum . | trunc 8) -}}
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

{{/* Secrets to mount: every distinct secretName of keys, certificates, CAs and the
     broker's TLS files. */}}
{{- define "apns-worker.secretNames" -}}
{{- $names := list -}}
{{- range $app, $a := .Values.apps -}}
{{- range $a.keys -}}{{- $names = append $names .secretName -}}{{- end -}}
{{- with $a.certificate -}}{{- $names = append $names .secretName -}}{{- end -}}
{{- with $a.ca -}}{{- $names = append $names .secretName -}}{{- end -}}
{{- end -}}
{{- with .Values.broker.tls.secretName -}}{{- $names = append $names . -}}{{- end -}}
{{- $names | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/* Runtime threads: worker.threads, else whole cores of resources.limits.cpu, else 1. */}}
{{- define "apns-worker.threads" -}}
{{- if not (kindIs "invalid" .Values.worker.threads) -}}
{{- .Values.worker.threads -}}
{{- else -}}
{{- $cpu := dig "limits" "cpu" "" .Values.resources | toString -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (trimSuffix "m" $cpu | int) 1000) -}}
{{- else -}}
{{- max 1 (floor $cpu | int) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The worker's TOML config. Values are written with toJson, whose strings, numbers,
     booleans and arrays are also valid TOML. */}}
{{- define "apns-worker.config" -}}
[broker]
heartbeat_secs = {{ .Values.broker.heartbeatSecs }}
prefetch = {{ .Values.broker.prefetch }}
{{- with .Values.broker.connectionName }}
connection_name = {{ . | toJson }}
{{- end }}
reconnect_min_ms = {{ .Values.broker.reconnectMinMs | int64 }}
reconnect_max_ms = {{ .Values.broker.reconnectMaxMs | int64 }}
confirm_timeout_ms = {{ .Values.broker.confirmTimeoutMs | int64 }}
{{- with .Values.broker.tls }}
{{- if .secretName }}
[broker.tls]
{{- with .caKey }}
ca_file = {{ printf "/etc/apns-worker/secrets/%s/%s" $.Values.broker.tls.secretName . | toJson }}
{{- end }}
{{- if and .certKey .keyKey }}
cert_file = {{ printf "/etc/apns-worker/secrets/%s/%s" $.Values.broker.tls.secretName .certKey | toJson }}
key_file = {{ printf "/etc/apns-worker/secrets/%s/%s" $.Values.broker.tls.secretName .keyKey | toJson }}
{{- end }}
{{- with .pkcs12Key }}
pkcs12_file = {{ printf "/etc/apns-worker/secrets/%s/%s" $.Values.broker.tls.secretName . | toJson }}
{{- end }}
{{- with .passwordKey }}
password_file = {{ printf "/etc/apns-worker/secrets/%s/%s" $.Values.broker.tls.secretName . | toJson }}
{{- end }}
{{- end }}
{{- end }}

[queues]
jobs = {{ .Values.queues.jobs | toJson }}
shards = {{ .Values.queues.shards | int64 }}
jobs_type = {{ .Values.queues.jobsType | toJson }}
delivery_limit = {{ .Values.queues.deliveryLimit }}
dead_letter_exchange = {{ .Values.queues.deadLetterExchange | toJson }}
dead_letter_queue = {{ .Values.queues.deadLetterQueue | toJson }}
cleanup_exchange = {{ .Values.queues.cleanupExchange | toJson }}
cleanup_queue = {{ .Values.queues.cleanupQueue | toJson }}
environment_exchange = {{ .Values.queues.environmentExchange | toJson }}
environment_queue = {{ .Values.queues.environmentQueue | toJson }}
retry_prefix = {{ .Values.queues.retryPrefix | toJson }}
urgent = {{ .Values.queues.urgent | toJson }}
outcomes = {{ .Values.queues.outcomes }}
outcome_exchange = {{ .Values.queues.outcomeExchange | toJson }}
outcome_queue = {{ .Values.queues.outcomeQueue | toJson }}
declare = {{ .Values.queues.declare }}

[retry]
max_attempts = {{ .Values.retry.maxAttempts }}
base_delay_ms = {{ .Values.retry.baseDelayMs | int64 }}
max_delay_ms = {{ .Values.retry.maxDelayMs | int64 }}
park_delay_ms = {{ .Values.retry.parkDelayMs | int64 }}
unknown_app_wait_ms = {{ .Values.retry.unknownAppWaitMs | int64 }}

[worker]
ack_batch = {{ .Values.worker.ackBatch }}
ack_flush_ms = {{ .Values.worker.ackFlushMs }}
drain_secs = {{ .Values.worker.drainSecs }}
max_job_bytes = {{ .Values.worker.maxJobBytes | int64 }}
max_tokens_per_job = {{ .Values.worker.maxTokensPerJob | int64 }}
max_notifications_in_flight = {{ .Values.worker.maxNotificationsInFlight | int64 }}
urgent_reserved = {{ .Values.worker.urgentReserved | int64 }}
dedupe_capacity = {{ .Values.worker.dedupeCapacity | int64 }}
threads = {{ include "apns-worker.threads" . }}
{{- if not .Values.apps }}
{{- if .Values.worker.allowNoApps }}
allow_no_apps = true
{{- else }}
{{- fail "apps: configure at least one app (its endpoint, topics and credentials): a worker with no app would dead-letter every job. Set worker.allowNoApps=true for a broker-only smoke test." }}
{{- end }}
{{- end }}

[circuit]
open_ms = {{ .Values.circuit.openMs | int64 }}
max_open_ms = {{ .Values.circuit.maxOpenMs | int64 }}
throttled_pause_ms = {{ .Values.circuit.throttledPauseMs | int64 }}

[admin]
listen = {{ printf "0.0.0.0:%v" .Values.admin.port | toJson }}
max_connections = {{ .Values.admin.maxConnections }}
header_read_timeout_ms = {{ .Values.admin.headerReadTimeoutMs | int64 }}

[apns]
request_timeout_ms = {{ .Values.apns.requestTimeoutMs | int64 }}
send_timeout_ms = {{ .Values.apns.sendTimeoutMs | int64 }}
max_resends = {{ .Values.apns.maxResends }}
ping_interval_secs = {{ .Values.apns.pingIntervalSecs }}
ping_timeout_secs = {{ .Values.apns.pingTimeoutSecs }}
token_refresh_secs = {{ .Values.apns.tokenRefreshSecs }}
connect_timeout_ms = {{ .Values.apns.connectTimeoutMs | int64 }}
reconnect_min_ms = {{ .Values.apns.reconnectMinMs | int64 }}
reconnect_max_ms = {{ .Values.apns.reconnectMaxMs | int64 }}
credentials_check_secs = {{ .Values.apns.credentialsCheckSecs }}
{{- range $name, $a := .Values.apps }}

[apps.{{ $name | toJson }}]
endpoint = {{ required (printf "apps.%s.endpoint is required" $name) $a.endpoint | toJson }}
topics = {{ default (list) $a.topics | toJson }}
{{- with $a.defaultTopic }}
default_topic = {{ . | toJson }}
{{- end }}
connections = {{ default 2 $a.connections }}
{{- with $a.maxStreamsPerConnection }}
max_streams_per_connection = {{ . }}
{{- end }}
{{- if not (kindIs "invalid" $a.environmentGuard) }}
environment_guard = {{ $a.environmentGuard }}
{{- end }}
{{- with $a.otherEndpoint }}
other_endpoint = {{ . | toJson }}
{{- end }}
{{- with $a.channelsEndpoint }}
channels_endpoint = {{ . | toJson }}
{{- end }}
{{- with $a.proxy }}
proxy = {{ . | toJson }}
{{- end }}
{{- with $a.ca }}
ca_file = {{ printf "/etc/apns-worker/secrets/%s/%s" .secretName (default "ca.crt" .key) | toJson }}
{{- end }}
{{- if $a.keys }}
team_id = {{ required (printf "apps.%s.teamId is required with keys" $name) $a.teamId | toJson }}
{{- range $a.keys }}
[[apps.{{ $name | toJson }}.keys]]
key_id = {{ .keyId | toJson }}
key_file = {{ printf "/etc/apns-worker/secrets/%s/%s" .secretName (default "AuthKey.p8" .secretKey) | toJson }}
topics = {{ default (list) .topics | toJson }}
{{- end }}
{{- else if $a.certificate }}
[apps.{{ $name | toJson }}.certificate]
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
