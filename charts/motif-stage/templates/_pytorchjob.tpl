{{/*
spec of a PyTorchJob running the stage's pods with (dict "root" $ "command" LIST "args" LIST):
the stage's training job, and the trial template of the Katib Experiment.
*/}}
{{- define "motif-stage.pytorchJobSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $pod := . -}}
{{- $nodes := int (include "motif-stage.nodes" $root) -}}
{{- $rp := $v.pytorchjob.runPolicy -}}
nprocPerNode: {{ include "motif-stage.procsPerNode" $root | quote }}
{{- if $v.pytorchjob.elastic.enabled }}
elasticPolicy:
  rdzvBackend: c10d
  minReplicas: {{ int ($v.pytorchjob.elastic.minReplicas | default $nodes) }}
  maxReplicas: {{ int ($v.pytorchjob.elastic.maxReplicas | default $nodes) }}
  maxRestarts: {{ int $v.pytorchjob.elastic.maxRestarts }}
{{- end }}
runPolicy:
  backoffLimit: {{ int $rp.backoffLimit }}
  cleanPodPolicy: {{ $rp.cleanPodPolicy }}
  {{- if not (kindIs "invalid" $rp.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ int $rp.ttlSecondsAfterFinished }}
  {{- end }}
  {{- if not (kindIs "invalid" $rp.activeDeadlineSeconds) }}
  activeDeadlineSeconds: {{ int64 $rp.activeDeadlineSeconds }}
  {{- end }}
  {{- with $rp.managedBy }}
  managedBy: {{ . }}
  {{- end }}
  {{- if $v.kueue.queueName }}
  suspend: true
  {{- end }}
  {{- if ne $v.gang.scheduler "none" }}
  schedulingPolicy:
    minAvailable: {{ ternary (int ($v.pytorchjob.elastic.minReplicas | default $nodes)) $nodes $v.pytorchjob.elastic.enabled }}
    {{- with $v.gang.queue }}
    queue: {{ . }}
    {{- end }}
    {{- with $v.priorityClassName }}
    priorityClass: {{ . }}
    {{- end }}
    {{- if not (kindIs "invalid" $v.gang.scheduleTimeoutSeconds) }}
    scheduleTimeoutSeconds: {{ int $v.gang.scheduleTimeoutSeconds }}
    {{- end }}
  {{- end }}
pytorchReplicaSpecs:
  Master:
    replicas: 1
    restartPolicy: {{ $v.pytorchjob.restartPolicy }}
    template:
      metadata:
        {{- include "motif-stage.trainPodMeta" (list $root "master") | nindent 8 }}
      spec:
        {{- include "motif-stage.trainPodSpecFor" $pod | nindent 8 }}
  {{- if gt $nodes 1 }}
  Worker:
    replicas: {{ sub $nodes 1 }}
    restartPolicy: {{ $v.pytorchjob.restartPolicy }}
    template:
      metadata:
        {{- include "motif-stage.trainPodMeta" (list $root "worker") | nindent 8 }}
      spec:
        {{- include "motif-stage.trainPodSpecFor" $pod | nindent 8 }}
  {{- end }}
{{- end -}}
