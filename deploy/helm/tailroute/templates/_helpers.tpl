{{/* Labels every object carries. No release name, chart version or
     managed-by: the chart's default render is the static manifest, applied
     with kubectl as often as installed with Helm. */}}
{{- define "tailroute.labels" -}}
app.kubernetes.io/name: tailroute-agent
app.kubernetes.io/part-of: tailroute
{{- end }}

{{/* The image reference. */}}
{{- define "tailroute.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | toJson -}}
{{- end }}

{{/* The Secret's key the agent reads its credential from. */}}
{{- define "tailroute.credentialKey" -}}
{{- if and (eq .Values.approval.control "tailscale") .Values.approval.oauthClientId -}}
oauth-client-secret
{{- else -}}
api-key
{{- end -}}
{{- end }}

{{/* Refuses values the agent would refuse at start, at render time. */}}
{{- define "tailroute.validate" -}}
{{- $control := .Values.approval.control -}}
{{- if not (has $control (list "none" "headscale" "tailscale")) -}}
{{- fail (printf "approval.control = %q: use none, headscale or tailscale" $control) -}}
{{- end -}}
{{- if and (eq $control "headscale") (not .Values.approval.url) -}}
{{- fail "approval.control = headscale needs approval.url, Headscale's URL (the same as tailscale up --login-server)" -}}
{{- end -}}
{{- if and (eq $control "none") (or .Values.approval.url .Values.approval.oauthClientId .Values.approval.credentials.create) -}}
{{- fail "approval.url, approval.oauthClientId or approval.credentials.create is set but approval.control is none: set approval.control to headscale or tailscale" -}}
{{- end -}}
{{- if and (eq $control "headscale") .Values.approval.oauthClientId -}}
{{- fail "approval.oauthClientId is for Tailscale; Headscale takes an API key (approval.credentials)" -}}
{{- end -}}
{{- if and .Values.approval.credentials.create (not .Values.approval.credentials.value) -}}
{{- fail "approval.credentials.create is true but approval.credentials.value is empty" -}}
{{- end -}}
{{- if not .Values.cluster.podCIDRs -}}
{{- fail "cluster.podCIDRs is empty: set kubeadm's --pod-network-cidr, e.g. [10.244.0.0/16]" -}}
{{- end -}}
{{- with .Values.identity -}}
{{- if .enabled -}}
{{- if eq $control "none" -}}
{{- fail "identity.enabled needs approval.control headscale or tailscale: the agent mints a key per pod through that API" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9-]{1,20}$" .clusterName) -}}
{{- fail (printf "identity.clusterName = %q: give a short name for this cluster (1-20 of a-z, 0-9, '-'); pod devices are named <cluster>-<namespace>-<pod>" .clusterName) -}}
{{- end -}}
{{- if not .namespaces -}}
{{- fail "identity.enabled with no identity.namespaces: no pod could ever have an identity; allow a namespace and its tags" -}}
{{- end -}}
{{- range $name, $allowance := .namespaces -}}
{{- if not (and $allowance $allowance.tags $allowance.defaultTags) -}}
{{- fail (printf "identity.namespaces.%s needs tags (those its pods may ask for) and defaultTags (those a pod gets when it asks for none)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.logFormat (list "json" "text")) -}}
{{- fail (printf "logFormat = %q: use json or text" .Values.logFormat) -}}
{{- end -}}
{{- end }}
