{{/* Common labels of every object. */}}
{{- define "axon.labels" -}}
app.kubernetes.io/part-of: axon
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "axon.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Checks of value combinations that cannot work; rendering fails with the reason. */}}
{{- define "axon.validate" -}}
{{- if and .Values.kubeProxyReplacement (not .Values.k8sServiceHost) -}}
{{- fail "kubeProxyReplacement=true needs k8sServiceHost (and k8sServicePort): without kube-proxy the agent cannot reach the apiserver through its ClusterIP" -}}
{{- end -}}
{{- if not .Values.socketLB.enabled -}}
{{- fail "socketLB.enabled=false is not supported: socket-LB is how the agent serves ClusterIP Services (it has no per-packet ClusterIP path)" -}}
{{- end -}}
{{- if not (has .Values.identityAllocationMode (list "crd" "kvstore")) -}}
{{- fail (printf "identityAllocationMode must be crd or kvstore, got %q" .Values.identityAllocationMode) -}}
{{- end -}}
{{- if and (eq .Values.identityAllocationMode "kvstore") (not .Values.etcd.endpoints) -}}
{{- fail "identityAllocationMode=kvstore needs etcd.endpoints" -}}
{{- end -}}
{{- if not (has .Values.loadBalancer.mode (list "snat" "dsr" "hybrid")) -}}
{{- fail (printf "loadBalancer.mode must be snat, dsr or hybrid, got %q" .Values.loadBalancer.mode) -}}
{{- end -}}
{{- if not (has .Values.loadBalancer.algorithm (list "random" "maglev")) -}}
{{- fail (printf "loadBalancer.algorithm must be random or maglev, got %q" .Values.loadBalancer.algorithm) -}}
{{- end -}}
{{- if not (has .Values.loadBalancer.acceleration (list "disabled" "native" "best-effort" "generic")) -}}
{{- fail (printf "loadBalancer.acceleration must be disabled, native, best-effort or generic, got %q" .Values.loadBalancer.acceleration) -}}
{{- end -}}
{{- if and .Values.mesh.acceleration.enabled (not (has .Values.mesh.mode (list "istio" "linkerd"))) -}}
{{- fail (printf "mesh.mode must be istio or linkerd, got %q" .Values.mesh.mode) -}}
{{- end -}}
{{- if gt (len .Values.ipam.operator.clusterPoolIPv4PodCIDRList) 1 -}}
{{- fail "ipam.operator.clusterPoolIPv4PodCIDRList: the operator takes one IPv4 pool" -}}
{{- end -}}
{{- if gt (len .Values.ipam.operator.clusterPoolIPv6PodCIDRList) 1 -}}
{{- fail "ipam.operator.clusterPoolIPv6PodCIDRList: the operator takes one IPv6 pool" -}}
{{- end -}}
{{- end -}}

{{/* The apiserver address for pods that must not depend on kube-proxy. */}}
{{- define "axon.apiserverEnv" -}}
{{- if .Values.k8sServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.k8sServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.k8sServicePort | quote }}
{{- end }}
{{- end -}}
