{{- define "wardgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wardgate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "wardgate.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "wardgate.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{- /* The pod's security: the image's user, nothing writable but the volumes. */ -}}
{{- define "wardgate.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "wardgate.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{- /* Refuse what cannot work, before anything is applied. */ -}}
{{- define "wardgate.checks" -}}
{{- $postgres := or (hasPrefix "postgresql" .Values.store) (ne .Values.storeSecret.name "") -}}
{{- if and (gt (int .Values.replicas) 1) (not $postgres) -}}
{{- fail (printf "replicas=%d needs a PostgreSQL store: set store (postgresql+psycopg://...) or storeSecret.name; SQLite serves one replica only" (int .Values.replicas)) -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.identity.secretName) -}}
{{- fail (printf "replicas=%d needs one identity for the fleet: set identity.secretName (a Secret made from deploy/fleet-secrets.sh); without it every member would show clients a different certificate and host key" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.store .Values.storeSecret.name -}}
{{- fail "set store or storeSecret.name, not both" -}}
{{- end -}}
{{- range .Values.agents -}}
{{- if not (and .name .secretName .secretKey) -}}
{{- fail "every entry of agents needs name, secretName and secretKey" -}}
{{- end -}}
{{- if and .run (not $.Values.identity.secretName) -}}
{{- fail (printf "agent %s runs in the cluster (run: true) and needs the fleet CA to trust the gateway: set identity.secretName" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
