{{/*
The broker and the result store: which type each is, where its URL/DSN comes from, and the
environment variables that carry it. values.yaml ("Broker and result store") explains the choices.
*/}}

{{- define "openhqm.resultsType" -}}
{{- $results := default dict .Values.config.results -}}
{{- default "sqlite" $results.type -}}
{{- end -}}

{{/* Types that live inside one pod (files under data_dir, or process memory). */}}
{{- define "openhqm.podLocalTypes" -}}
{{- list "sqlite" "memory" | toJson -}}
{{- end -}}

{{/* A bundled (dependency) chart's fullname, as Bitnami's common.names.fullname computes it. */}}
{{- define "openhqm.dependencyFullname" -}}
{{- $values := index .root.Values .name -}}
{{- if $values.fullnameOverride -}}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .name $values.nameOverride -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The bundled Redis: its master Service, and the Secret and key of its password. */}}
{{- define "openhqm.bundledRedis" -}}
{{- $redis := .Values.redis -}}
{{- $fullname := include "openhqm.dependencyFullname" (dict "root" . "name" "redis") -}}
{{- $auth := default dict $redis.auth -}}
{{- $port := int (dig "master" "service" "ports" "redis" 6379 $redis) -}}
{{- dict
      "host" (printf "%s-master" $fullname)
      "port" $port
      "auth" (ne (toString (dig "enabled" true $auth)) "false")
      "secret" (default $fullname $auth.existingSecret)
      "key" (default "redis-password" $auth.existingSecretPasswordKey) | toJson -}}
{{- end -}}

{{/* The bundled PostgreSQL: its primary Service, database, user, and the Secret and key of the user's password. */}}
{{- define "openhqm.bundledPostgresql" -}}
{{- $pg := .Values.postgresql -}}
{{- $fullname := include "openhqm.dependencyFullname" (dict "root" . "name" "postgresql") -}}
{{- $auth := default dict $pg.auth -}}
{{- $host := ternary (printf "%s-primary" $fullname) $fullname (eq (default "standalone" $pg.architecture) "replication") -}}
{{- dict
      "host" $host
      "port" (int (dig "primary" "service" "ports" "postgresql" 5432 $pg))
      "user" (default "" $auth.username)
      "database" (default "" $auth.database)
      "secret" (default $fullname $auth.existingSecret)
      "key" (dig "secretKeys" "userPasswordKey" "password" $auth) | toJson -}}
{{- end -}}

{{/* The Redis URL variables the selected types need, less those in .skip (set by the user). */}}
{{- define "openhqm.redisVariables" -}}
{{- $vars := list -}}
{{- if and (eq (include "openhqm.queueType" .root) "redis") (not (has "OPENHQM_QUEUE__REDIS__URL" .skip)) -}}
{{- $vars = append $vars "OPENHQM_QUEUE__REDIS__URL" -}}
{{- end -}}
{{- if and (eq (include "openhqm.resultsType" .root) "redis") (not (has "OPENHQM_RESULTS__REDIS__URL" .skip)) -}}
{{- $vars = append $vars "OPENHQM_RESULTS__REDIS__URL" -}}
{{- end -}}
{{- toJson $vars -}}
{{- end -}}

{{/*
The variables that connect OpenHQM to Redis and PostgreSQL, as a list of EnvVar, for the types
config.queue.type and config.results.type select. Takes (dict "root" $ "skip" <names set by the user>):
a name the user sets in secretEnv/extraEnv is theirs, and the chart leaves it out.
*/}}
{{- define "openhqm.storeEnv" -}}
{{- $v := .root.Values -}}
{{- $secretName := include "openhqm.secretName" .root -}}
{{- $env := list -}}
{{- $redisVars := include "openhqm.redisVariables" (dict "root" .root "skip" .skip) | fromJsonArray -}}
{{- if $redisVars -}}
{{- if $v.redis.enabled -}}
{{- $redis := include "openhqm.bundledRedis" .root | fromJson -}}
{{- $credentials := "" -}}
{{- if $redis.auth -}}
{{- $env = append $env (dict "name" "REDIS_PASSWORD" "valueFrom" (dict "secretKeyRef" (dict "name" $redis.secret "key" $redis.key))) -}}
{{- $credentials = ":$(REDIS_PASSWORD)@" -}}
{{- end -}}
{{- range $redisVars -}}
{{- $env = append $env (dict "name" . "value" (printf "redis://%s%s:%d/0" $credentials $redis.host (int $redis.port))) -}}
{{- end -}}
{{- else -}}
{{- $ref := dict "name" (default $secretName $v.externalRedis.existingSecret) "key" $v.externalRedis.existingSecretKey -}}
{{- range $redisVars -}}
{{- $env = append $env (dict "name" . "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq (include "openhqm.resultsType" .root) "postgres") (not (has "OPENHQM_RESULTS__POSTGRES__DSN" .skip)) -}}
{{- if $v.postgresql.enabled -}}
{{- $pg := include "openhqm.bundledPostgresql" .root | fromJson -}}
{{- $env = append $env (dict "name" "POSTGRES_PASSWORD" "valueFrom" (dict "secretKeyRef" (dict "name" $pg.secret "key" $pg.key))) -}}
{{- $dsn := printf "postgresql://%s:$(POSTGRES_PASSWORD)@%s:%d/%s" $pg.user $pg.host (int $pg.port) $pg.database -}}
{{- $env = append $env (dict "name" "OPENHQM_RESULTS__POSTGRES__DSN" "value" $dsn) -}}
{{- else -}}
{{- $ref := dict "name" (default $secretName $v.externalPostgresql.existingSecret) "key" $v.externalPostgresql.existingSecretKey -}}
{{- $env = append $env (dict "name" "OPENHQM_RESULTS__POSTGRES__DSN" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Keys the chart's own Secret holds for externalRedis.url and externalPostgresql.dsn. */}}
{{- define "openhqm.storeSecretData" -}}
{{- $v := .Values -}}
{{- $data := dict -}}
{{- $redisUsed := has "redis" (list (include "openhqm.queueType" .) (include "openhqm.resultsType" .)) -}}
{{- if and $redisUsed (not $v.redis.enabled) (not $v.externalRedis.existingSecret) $v.externalRedis.url -}}
{{- $_ := set $data $v.externalRedis.existingSecretKey $v.externalRedis.url -}}
{{- end -}}
{{- $postgresUsed := eq (include "openhqm.resultsType" .) "postgres" -}}
{{- if and $postgresUsed (not $v.postgresql.enabled) (not $v.externalPostgresql.existingSecret) $v.externalPostgresql.dsn -}}
{{- $_ := set $data $v.externalPostgresql.existingSecretKey $v.externalPostgresql.dsn -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/* A description of the broker and the store for NOTES.txt. */}}
{{- define "openhqm.storeSummary" -}}
{{- $v := .Values -}}
{{- range $what, $type := dict "queue" (include "openhqm.queueType" .) "results" (include "openhqm.resultsType" .) }}
  {{ $what }}: {{ $type }}
  {{- if eq $type "redis" }}{{ if $v.redis.enabled }} (bundled Redis, {{ (include "openhqm.bundledRedis" $ | fromJson).host }}){{ else }} (external Redis, URL from Secret {{ default (include "openhqm.secretName" $) $v.externalRedis.existingSecret }} key {{ $v.externalRedis.existingSecretKey }}){{ end }}
  {{- else if eq $type "postgres" }}{{ if $v.postgresql.enabled }} (bundled PostgreSQL, {{ (include "openhqm.bundledPostgresql" $ | fromJson).host }}){{ else }} (external PostgreSQL, DSN from Secret {{ default (include "openhqm.secretName" $) $v.externalPostgresql.existingSecret }} key {{ $v.externalPostgresql.existingSecretKey }}){{ end }}
  {{- else if eq $type "sqlite" }} (files under /var/lib/openhqm{{ if not $v.persistence.enabled }} on an emptyDir: lost when the pod is rescheduled; set persistence.enabled=true{{ end }})
  {{- else if eq $type "memory" }} (process memory: lost on every restart; for trying the chart only)
  {{- end }}
{{- end }}
{{- end -}}

{{/* Refuse a broker or store that these pods cannot share, and store settings that lead nowhere. */}}
{{- define "openhqm.validateStores" -}}
{{- $v := .Values -}}
{{- $local := include "openhqm.podLocalTypes" . | fromJsonArray -}}
{{- $queueType := include "openhqm.queueType" . -}}
{{- $resultsType := include "openhqm.resultsType" . -}}
{{- $consumers := and (eq $v.mode "split") (or $v.worker.enabled $v.sidecar.enabled) -}}
{{- $stores := "results.type redis or postgres (externalRedis / externalPostgresql, or redis.enabled / postgresql.enabled)" -}}
{{- if and $consumers (has $queueType $local) -}}
{{- fail (printf "config.queue.type %s keeps the queue inside one pod (files or memory), so listener and worker pods cannot share it: use a network broker (redis, rabbitmq, kafka, sqs, nats, ...) or mode=serve" $queueType) -}}
{{- end -}}
{{- if and (eq $v.mode "serve") (has $queueType $local) (gt (int $v.listener.replicas) 1) -}}
{{- fail (printf "mode=serve with the %s queue runs one replica only (SQLite's locking does not work across nodes, even on a ReadWriteMany volume): set listener.replicas=1 or use a network broker" $queueType) -}}
{{- end -}}
{{- if and $consumers $v.listener.enabled (has $resultsType $local) -}}
{{- fail (printf "config.results.type %s keeps results inside one pod, but listener and worker pods both read and write them: use %s" $resultsType $stores) -}}
{{- end -}}
{{- if and $v.listener.enabled (has $resultsType $local) (gt (int $v.listener.replicas) 1) -}}
{{- fail (printf "config.results.type %s with listener.replicas=%d: each replica would keep its own results and answer 404 for the others' requests: set listener.replicas=1 or use %s" $resultsType (int $v.listener.replicas) $stores) -}}
{{- end -}}
{{- if and $v.redis.enabled $v.externalRedis.existingSecret -}}
{{- fail "redis.enabled installs Redis and externalRedis.existingSecret names another one: use one of them" -}}
{{- end -}}
{{- if and $v.redis.enabled (dig "sentinel" "enabled" false $v.redis) -}}
{{- fail "redis.sentinel.enabled: OpenHQM connects to one Redis URL and the bundled chart's Sentinel mode has no master Service; use redis.architecture standalone or replication" -}}
{{- end -}}
{{- if and $v.postgresql.enabled $v.externalPostgresql.existingSecret -}}
{{- fail "postgresql.enabled installs PostgreSQL and externalPostgresql.existingSecret names another one: use one of them" -}}
{{- end -}}
{{- if and $v.postgresql.enabled (eq $resultsType "postgres") -}}
{{- $pg := include "openhqm.bundledPostgresql" . | fromJson -}}
{{- if or (not $pg.user) (not $pg.database) (eq $pg.user "postgres") -}}
{{- fail "postgresql.enabled: set postgresql.auth.username (not postgres) and postgresql.auth.database, the account OpenHQM connects with" -}}
{{- end -}}
{{- end -}}
{{- $chartSecret := and $v.secret.create (not $v.secret.existingSecret) -}}
{{- $userVars := list -}}
{{- range concat $v.secretEnv $v.extraEnv }}{{ $userVars = append $userVars .name }}{{ end -}}
{{- range $var := list "OPENHQM_QUEUE__REDIS__URL" "OPENHQM_RESULTS__REDIS__URL" "OPENHQM_RESULTS__POSTGRES__DSN" -}}
{{- $bundled := ternary $v.postgresql.enabled $v.redis.enabled (hasSuffix "DSN" $var) -}}
{{- if and $bundled (has $var $userVars) -}}
{{- fail (printf "%s is in secretEnv/extraEnv, so the bundled %s (%s.enabled) would go unused: remove one of them" $var (ternary "PostgreSQL" "Redis" (hasSuffix "DSN" $var)) (ternary "postgresql" "redis" (hasSuffix "DSN" $var))) -}}
{{- end -}}
{{- end -}}
{{- range $var, $bundled := dict "REDIS_PASSWORD" $v.redis.enabled "POSTGRES_PASSWORD" $v.postgresql.enabled -}}
{{- if and $bundled (has $var $userVars) -}}
{{- fail (printf "%s is set by the chart from the bundled server's Secret: remove it from secretEnv/extraEnv" $var) -}}
{{- end -}}
{{- end -}}
{{- $usesRedis := and (has "redis" (list $queueType $resultsType)) (not $v.redis.enabled) (not $v.externalRedis.existingSecret) -}}
{{- if and $usesRedis (include "openhqm.redisVariables" (dict "root" . "skip" $userVars) | fromJsonArray) -}}
{{- if and (not $chartSecret) (not $v.secret.existingSecret) -}}
{{- fail "Redis is the queue or the result store, and its URL has no Secret: set externalRedis.existingSecret, secret.existingSecret or secret.create=true (with externalRedis.url), or redis.enabled=true" -}}
{{- end -}}
{{- if and $chartSecret (not $v.externalRedis.url) (not (hasKey (default dict $v.secret.data) $v.externalRedis.existingSecretKey)) -}}
{{- fail "Redis is the queue or the result store: set externalRedis.url (or externalRedis.existingSecret), or redis.enabled=true" -}}
{{- end -}}
{{- end -}}
{{- $usesPostgres := and (eq $resultsType "postgres") (not $v.postgresql.enabled) (not $v.externalPostgresql.existingSecret) (not (has "OPENHQM_RESULTS__POSTGRES__DSN" $userVars)) -}}
{{- if $usesPostgres -}}
{{- if and (not $chartSecret) (not $v.secret.existingSecret) -}}
{{- fail "config.results.type postgres and its DSN has no Secret: set externalPostgresql.existingSecret, secret.existingSecret or secret.create=true (with externalPostgresql.dsn), or postgresql.enabled=true" -}}
{{- end -}}
{{- if and $chartSecret (not $v.externalPostgresql.dsn) (not (hasKey (default dict $v.secret.data) $v.externalPostgresql.existingSecretKey)) -}}
{{- fail "config.results.type postgres: set externalPostgresql.dsn (or externalPostgresql.existingSecret), or postgresql.enabled=true" -}}
{{- end -}}
{{- end -}}
{{- end -}}
