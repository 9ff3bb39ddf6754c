{{/*
Rules the schema cannot express, and the training operator's webhook-only rules, checked at
render time so a bad stage fails at `helm install` with a message naming the value.
*/}}
{{- define "motif-stage.validate" -}}
{{- $_ := include "motif-stage.motif" . -}}
{{- $_ = include "motif-stage.fullname" . -}}
{{- $_ = include "motif-stage.image" . -}}
{{- $nodes := int (include "motif-stage.nodes" .) -}}
{{- $v := .Values -}}
{{- if not (has $v.workload (list "PyTorchJob" "TrainJob")) -}}
{{- fail (printf "workload: %q is not a workload kind; use PyTorchJob or TrainJob" (toString $v.workload)) -}}
{{- end -}}
{{- if not (has $v.pytorchjob.runPolicy.managedBy (list "" "kubeflow.org/training-operator" "kueue.x-k8s.io/multikueue")) -}}
{{- fail (printf "pytorchjob.runPolicy.managedBy: %q is not accepted by the training operator; use \"\", kubeflow.org/training-operator or kueue.x-k8s.io/multikueue" $v.pytorchjob.runPolicy.managedBy) -}}
{{- end -}}
{{- if and $v.pytorchjob.elastic.enabled (lt $nodes 2) -}}
{{- fail (printf "pytorchjob.elastic.enabled: elastic training needs a Worker replica, but motif.parallel.nodes is %d (1 pod = the Master only); set nodes >= 2 or disable elastic" $nodes) -}}
{{- end -}}
{{- if $v.pytorchjob.elastic.enabled -}}
{{- $min := int ($v.pytorchjob.elastic.minReplicas | default $nodes) -}}
{{- $max := int ($v.pytorchjob.elastic.maxReplicas | default $nodes) -}}
{{- if gt $min $max -}}
{{- fail (printf "pytorchjob.elastic.minReplicas: %d is above maxReplicas %d" $min $max) -}}
{{- end -}}
{{- end -}}
{{- if and (ne $v.gang.scheduler "none") $v.kueue.queueName -}}
{{- fail (printf "kueue.queueName: %q and gang.scheduler: %s both schedule the job; Kueue admits whole jobs already, set gang.scheduler: none" $v.kueue.queueName $v.gang.scheduler) -}}
{{- end -}}
{{- if and $v.gang.queue (ne $v.gang.scheduler "volcano") -}}
{{- fail (printf "gang.queue: %q is a Volcano queue; it needs gang.scheduler: volcano (got %s)" $v.gang.queue $v.gang.scheduler) -}}
{{- end -}}
{{- if and $v.hostNetwork (eq (int $v.pytorchjob.masterPort) (int (include "motif-stage.metricsPort" .))) -}}
{{- fail (printf "pytorchjob.masterPort: %d is also motif.metrics.port; with hostNetwork both bind on the node" (int $v.pytorchjob.masterPort)) -}}
{{- end -}}
{{- if and (eq $v.workload "TrainJob") (ne $v.pytorchjob.runPolicy.managedBy "") -}}
{{- fail "pytorchjob.runPolicy.managedBy: set for a PyTorchJob only; a TrainJob is managed by the trainer controller" -}}
{{- end -}}
{{- range $name, $vol := $v.volumes -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "volumes.%s: volume names must be lowercase letters, digits and '-'" $name) -}}
{{- end -}}
{{- if not $vol.mountPath -}}
{{- fail (printf "volumes.%s.mountPath: missing" $name) -}}
{{- end -}}
{{- if and $vol.existingClaim $vol.size -}}
{{- fail (printf "volumes.%s: set existingClaim (use a claim) or size (create one), not both" $name) -}}
{{- end -}}
{{- if not (or $vol.existingClaim $vol.size) -}}
{{- fail (printf "volumes.%s: set existingClaim (an existing PersistentVolumeClaim) or size (a new one)" $name) -}}
{{- end -}}
{{- if and $vol.existingClaim $vol.claimName -}}
{{- fail (printf "volumes.%s.claimName: names a claim the chart creates; with existingClaim set, remove it" $name) -}}
{{- end -}}
{{- if $vol.readOnly -}}
{{- $dir := include "motif-stage.absPath" (list $ $.Values.motif.checkpoint.dir) -}}
{{- if or (eq $dir (clean $vol.mountPath)) (hasPrefix (printf "%s/" (clean $vol.mountPath)) $dir) -}}
{{- fail (printf "volumes.%s.readOnly: motif.checkpoint.dir %q is on this volume, and the stage must write there; use stageWritableOnly: true instead" $name $dir) -}}
{{- end -}}
{{- end -}}
{{- if and $vol.readOnly $vol.stageWritableOnly -}}
{{- fail (printf "volumes.%s: readOnly and stageWritableOnly exclude each other" $name) -}}
{{- end -}}
{{- if $vol.stageWritableOnly -}}
{{- $_ = include "motif-stage.stageSubPath" (list $ $name $vol) -}}
{{- end -}}
{{- end -}}
{{- end -}}
