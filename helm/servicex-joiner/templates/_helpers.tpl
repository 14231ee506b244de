{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "servicex-joiner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or the release name alone when it already holds the chart
name. Truncated to 63 characters; components append a suffix to a name cut to 52 (see component.fullname).
*/}}
{{- define "servicex-joiner.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's objects: <fullname>-<component>, within 63 characters.
Usage: include "servicex-joiner.componentName" (list . "codegen")
*/}}
{{- define "servicex-joiner.componentName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- printf "%s-%s" (include "servicex-joiner.fullname" $root | trunc 52 | trimSuffix "-") $component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, as used by the chart label.
*/}}
{{- define "servicex-joiner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "servicex-joiner.labels" -}}
helm.sh/chart: {{ include "servicex-joiner.chart" . }}
{{ include "servicex-joiner.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: servicex
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "servicex-joiner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "servicex-joiner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component.
Usage: include "servicex-joiner.componentLabels" (list . "codegen")
*/}}
{{- define "servicex-joiner.componentLabels" -}}
{{ include "servicex-joiner.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "servicex-joiner.componentSelectorLabels" -}}
{{ include "servicex-joiner.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "servicex-joiner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "servicex-joiner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The servicex-joiner image reference: repository@digest, or repository:tag (tag defaults to appVersion).
*/}}
{{- define "servicex-joiner.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The science image the code generator answers with.
*/}}
{{- define "servicex-joiner.scienceImage" -}}
{{- default (include "servicex-joiner.image" .) .Values.joiner.scienceImage }}
{{- end }}

{{/*
Name of the code generator's Service.
*/}}
{{- define "servicex-joiner.codegenServiceName" -}}
{{- default (include "servicex-joiner.componentName" (list . "codegen")) .Values.codegen.service.name }}
{{- end }}

{{/*
Name of the ConfigMap with the non-secret settings.
*/}}
{{- define "servicex-joiner.configName" -}}
{{- include "servicex-joiner.componentName" (list . "config") }}
{{- end }}

{{/*
Name of the Secret with the object-store credentials: existingSecret, or the chart's own.
*/}}
{{- define "servicex-joiner.objectStoreSecretName" -}}
{{- default (include "servicex-joiner.componentName" (list . "object-store")) .Values.objectStore.existingSecret }}
{{- end }}

{{/*
True (non-empty) when the chart itself makes the object-store Secret.
*/}}
{{- define "servicex-joiner.makeObjectStoreSecret" -}}
{{- if and .Values.objectStore.endpoint (not .Values.objectStore.existingSecret) }}true{{ end }}
{{- end }}

{{/*
TRITON_URL: our Triton's gRPC Service, or the external one, or empty.
*/}}
{{- define "servicex-joiner.tritonUrl" -}}
{{- if .Values.triton.enabled }}
{{- printf "%s:%v" (include "servicex-joiner.componentName" (list . "triton")) .Values.triton.service.grpcPort }}
{{- else }}
{{- .Values.triton.externalUrl }}
{{- end }}
{{- end }}

{{/*
Checks of value combinations the schema cannot express; rendered (as nothing) by every template that
depends on them.
*/}}
{{- define "servicex-joiner.validate" -}}
{{- if and .Values.triton.enabled .Values.triton.externalUrl }}
{{- fail "triton.enabled and triton.externalUrl exclude each other: deploy a Triton or name one" }}
{{- end }}
{{- if and .Values.cacheClean.enabled (not .Values.objectStore.endpoint) }}
{{- fail "cacheClean.enabled needs objectStore.endpoint (the cache lives in the object store)" }}
{{- end }}
{{- if include "servicex-joiner.makeObjectStoreSecret" . }}
{{- if not (and .Values.objectStore.accessKey .Values.objectStore.secretKey) }}
{{- fail "objectStore.endpoint is set: give objectStore.existingSecret, or objectStore.accessKey and objectStore.secretKey" }}
{{- end }}
{{- end }}
{{- if and .Values.triton.enabled (eq .Values.triton.modelRepository.source "pvc") (not .Values.triton.modelRepository.pvc.claimName) }}
{{- fail "triton.modelRepository.source is pvc: set triton.modelRepository.pvc.claimName" }}
{{- end }}
{{- if and .Values.triton.enabled (eq .Values.triton.modelRepository.source "image") (not (and .Values.triton.modelRepository.image.repository .Values.triton.modelRepository.image.tag)) }}
{{- fail "triton.modelRepository.source is image: set triton.modelRepository.image.repository and .tag" }}
{{- end }}
{{- end }}

{{/*
Environment of the servicex-joiner containers: the ConfigMap, plus the credentials from the Secret.
*/}}
{{- define "servicex-joiner.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "servicex-joiner.configName" . }}
env:
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  - name: HOST_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
{{- if .Values.objectStore.endpoint }}
  - name: MINIO_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "servicex-joiner.objectStoreSecretName" . }}
        key: {{ .Values.objectStore.accessKeyKey }}
  - name: MINIO_SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "servicex-joiner.objectStoreSecretName" . }}
        key: {{ .Values.objectStore.secretKeyKey }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when their settings or chart-made credentials change.
*/}}
{{- define "servicex-joiner.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if include "servicex-joiner.makeObjectStoreSecret" . }}
checksum/object-store: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}
