{{/*
Name of the training job and prefix of every object: fullnameOverride or the release name.
The training operator's webhook requires a DNS-1035 label of at most 63 characters, and the
operator names a Service per pod (`<name>-worker-<i>`), itself a DNS-1035 label.
*/}}
{{- define "motif-stage.fullname" -}}
{{- $name := default .Release.Name .Values.fullnameOverride -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "job name %q (release name or fullnameOverride) must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit" $name) -}}
{{- end -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "job name %q (release name or fullnameOverride) is %d characters; the training operator allows at most 63" $name (len $name)) -}}
{{- end -}}
{{- $longest := printf "%s-worker-%d" $name (sub (int (include "motif-stage.nodes" .)) 2 | max 0) -}}
{{- if gt (len $longest) 63 -}}
{{- fail (printf "job name %q is too long for motif.parallel.nodes %s: the operator's Service %q would exceed 63 characters" $name (include "motif-stage.nodes" .) $longest) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* The stage config, checked for what the chart needs from it. */}}
{{- define "motif-stage.motif" -}}
{{- $m := .Values.motif | default dict -}}
{{- if not $m.name -}}
{{- fail "motif.name: missing; install with a stage file: helm install NAME charts/motif-stage -f jobs/<recipe>/<stage>.yaml" -}}
{{- end -}}
{{- if not $m.checkpoint -}}
{{- fail "motif.checkpoint.dir: missing; the stage needs a checkpoint directory on shared storage" -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{- define "motif-stage.stageName" -}}
{{- .Values.motif.name -}}
{{- end -}}

{{/* Pods of the training job (1 Master + nodes-1 Workers). */}}
{{- define "motif-stage.nodes" -}}
{{- $p := (.Values.motif | default dict).parallel | default dict -}}
{{- int (ternary $p.nodes 1 (hasKey $p "nodes")) -}}
{{- end -}}

{{/* Processes per pod, also the GPUs per pod on cuda. */}}
{{- define "motif-stage.procsPerNode" -}}
{{- $p := (.Values.motif | default dict).parallel | default dict -}}
{{- int (ternary $p.procs_per_node 1 (hasKey $p "procs_per_node")) -}}
{{- end -}}

{{- define "motif-stage.device" -}}
{{- $p := (.Values.motif | default dict).parallel | default dict -}}
{{- $p.device | default "cuda" -}}
{{- end -}}

{{- define "motif-stage.metricsPort" -}}
{{- $m := (.Values.motif | default dict).metrics | default dict -}}
{{- int ($m.port | default 9401) -}}
{{- end -}}

{{/* Chart label value: name-version. */}}
{{- define "motif-stage.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: the pods of one release. */}}
{{- define "motif-stage.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The labels of every object: recommended app.kubernetes.io labels plus the stage. */}}
{{- define "motif-stage.labels" -}}
helm.sh/chart: {{ include "motif-stage.chart" . }}
{{ include "motif-stage.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: motif
motif/stage: {{ include "motif-stage.stageName" . | quote }}
{{- end -}}

{{/*
Paths of the stage, as annotations (label values cannot hold '/'): `motif status` reads them.
*/}}
{{- define "motif-stage.pathAnnotations" -}}
{{- $m := .Values.motif -}}
motif/checkpoint-dir: {{ include "motif-stage.absPath" (list . $m.checkpoint.dir) | quote }}
motif/output: {{ include "motif-stage.absPath" (list . $m.output) | quote }}
{{- with $m.input }}
motif/input: {{ include "motif-stage.absPath" (list $ .) | quote }}
{{- end }}
{{- with $m.growth }}
motif/grown: {{ include "motif-stage.absPath" (list $ .output) | quote }}
{{- end }}
{{- end -}}

{{/* A path of the stage config, absolute: relative paths resolve against workingDir. */}}
{{- define "motif-stage.absPath" -}}
{{- $root := index . 0 -}}
{{- $path := toString (index . 1) -}}
{{- if hasPrefix "/" $path -}}
{{- clean $path -}}
{{- else -}}
{{- clean (printf "%s/%s" $root.Values.workingDir $path) -}}
{{- end -}}
{{- end -}}

{{/* The checkpoint the training starts from: the grown one, else the input ("" for none). */}}
{{- define "motif-stage.startCheckpoint" -}}
{{- $m := .Values.motif -}}
{{- if $m.growth -}}
{{- include "motif-stage.absPath" (list . $m.growth.output) -}}
{{- else if $m.input -}}
{{- include "motif-stage.absPath" (list . $m.input) -}}
{{- end -}}
{{- end -}}

{{- define "motif-stage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "motif-stage.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "motif-stage.image" -}}
{{- $repo := required "image.repository: missing; set the trainer image" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "motif-stage.configMapName" -}}
{{- printf "%s-stage" (include "motif-stage.fullname" .) -}}
{{- end -}}

{{/* Claim name of a volume entry: existingClaim, or the claim the chart creates. */}}
{{- define "motif-stage.claimName" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $v := index . 2 -}}
{{- $v.existingClaim | default $v.claimName | default (printf "%s-%s" (include "motif-stage.fullname" $root) $name) -}}
{{- end -}}

{{/*
The subdirectory of a stageWritableOnly volume the stage may write: motif.checkpoint.dir
relative to the volume's mountPath. Fails when the stage would write outside it.
*/}}
{{- define "motif-stage.stageSubPath" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $v := index . 2 -}}
{{- $m := $root.Values.motif -}}
{{- $mount := clean $v.mountPath -}}
{{- $dir := include "motif-stage.absPath" (list $root $m.checkpoint.dir) -}}
{{- if not (hasPrefix (printf "%s/" $mount) $dir) -}}
{{- fail (printf "volumes.%s.stageWritableOnly: motif.checkpoint.dir %q is not under the volume's mountPath %q" $name $dir $mount) -}}
{{- end -}}
{{- $writes := list (list "motif.output" $m.output) -}}
{{- if $m.growth -}}{{- $writes = append $writes (list "motif.growth.output" $m.growth.output) -}}{{- end -}}
{{- with (($m.eval | default dict).out) -}}{{- $writes = append $writes (list "motif.eval.out" .) -}}{{- end -}}
{{- range $writes -}}
{{- $p := include "motif-stage.absPath" (list $root (index . 1)) -}}
{{- if and (hasPrefix (printf "%s/" $mount) $p) (not (hasPrefix (printf "%s/" $dir) $p)) -}}
{{- fail (printf "volumes.%s.stageWritableOnly: %s %q is outside motif.checkpoint.dir %q, and the rest of the volume is mounted read-only" $name (index . 0) $p $dir) -}}
{{- end -}}
{{- end -}}
{{- trimPrefix (printf "%s/" $mount) $dir -}}
{{- end -}}

{{/*
volumeMounts of the motif containers, for a core Pod (mounts keyed by mountPath): a
stageWritableOnly volume is mounted twice, read-only at its mountPath and writable at the stage's
checkpoint directory. Two mounts of one volume, not two volumes of one claim: a pod with two
volumes of the same claim hangs in ContainerCreating on NFS and CephFS (kubernetes#127004).
*/}}
{{- define "motif-stage.volumeMounts" -}}
- name: stage-config
  mountPath: /etc/motif
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- range $name, $v := .Values.volumes }}
- name: vol-{{ $name }}
  mountPath: {{ $v.mountPath }}
  readOnly: {{ or $v.readOnly $v.stageWritableOnly | default false }}
{{- if $v.stageWritableOnly }}
- name: vol-{{ $name }}
  mountPath: {{ include "motif-stage.absPath" (list $ $.Values.motif.checkpoint.dir) }}
  subPath: {{ include "motif-stage.stageSubPath" (list $ $name $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
volumeMounts of a Trainer v2 runtime patch, whose schema keys a container's mounts by volume
name: one mount per volume. A stageWritableOnly volume is mounted once, writable, at its
mountPath (the read-only view of earlier stages' outputs needs a second mount of the volume,
which the patch cannot express); NOTES.txt says so.
*/}}
{{- define "motif-stage.volumeMountsByName" -}}
- name: stage-config
  mountPath: /etc/motif
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- range $name, $v := .Values.volumes }}
- name: vol-{{ $name }}
  mountPath: {{ $v.mountPath }}
  readOnly: {{ $v.readOnly | default false }}
{{- end }}
{{- end -}}

{{/*
Name of the growth Job: from the growth destination (the claim and the path on it), not from the
release, so every release that grows into one destination names the same Job. Kubernetes holds
one object per name in a namespace, and Helm refuses to take over an object of another release:
a second grower on the same destination cannot be created (with the same image; the image is part
of the name, see below).
*/}}
{{- define "motif-stage.growJobName" -}}
{{- $dest := include "motif-stage.absPath" (list . .Values.motif.growth.output) -}}
{{- $where := $dest -}}
{{- range $name, $v := .Values.volumes -}}
{{- $mount := clean $v.mountPath -}}
{{- if hasPrefix (printf "%s/" $mount) $dest -}}
{{- $where = printf "pvc/%s/%s" (include "motif-stage.claimName" (list $ $name $v)) (trimPrefix (printf "%s/" $mount) $dest) -}}
{{- end -}}
{{- end -}}
{{- /* The image too: a Job's pod template is immutable, so `helm upgrade` to a new image needs a
new Job (which finds the output already grown, and reuses it). */ -}}
{{- printf "%s-grow-%s-%s" (include "motif-stage.stageName" . | trunc 40 | trimSuffix "-") (sha256sum $where | trunc 10) (include "motif-stage.image" . | sha256sum | trunc 6) -}}
{{- end -}}

{{/* Seconds between SIGTERM and SIGKILL of a training pod: its last step and checkpoint. */}}
{{- define "motif-stage.graceSeconds" -}}
{{- int64 .Values.train.terminationGracePeriodSeconds -}}
{{- end -}}

{{/* volumes of the motif pods; `shm` is added by the training pods only. */}}
{{- define "motif-stage.volumes" -}}
- name: stage-config
  configMap:
    name: {{ include "motif-stage.configMapName" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSize }}
{{- range $name, $v := .Values.volumes }}
- name: vol-{{ $name }}
  persistentVolumeClaim:
    claimName: {{ include "motif-stage.claimName" (list $ $name $v) }}
{{- end }}
{{- end -}}

{{/* Environment of the motif containers: writable HOME and caches on /tmp, then user env. */}}
{{- define "motif-stage.env" -}}
- name: HOME
  value: /tmp/home
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: HF_HOME
  value: /tmp/cache/huggingface
- name: TORCH_EXTENSIONS_DIR
  value: /tmp/cache/torch_extensions
- name: TRITON_CACHE_DIR
  value: /tmp/cache/triton
- name: PYTHONUNBUFFERED
  value: "1"
- name: MOTIF_STAGE
  value: {{ include "motif-stage.stageName" . | quote }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ toString $v | quote }}
{{- end }}
{{- range .Values.secretEnv }}
- name: {{ required "secretEnv[].name: missing" .name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secretEnv %s: secretName missing" .name) .secretName }}
      key: {{ required (printf "secretEnv %s: key missing" .name) .key }}
{{- end }}
{{- end -}}

{{/* Init container: wait until the checkpoint at the given path carries the completion marker. */}}
{{- define "motif-stage.waitContainer" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
- name: wait-for-checkpoint
  image: {{ include "motif-stage.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - |
      marker="$0/{{ $root.Values.train.completeMarker }}"
      until [ -f "$marker" ]; do
        echo "waiting for $marker (written when the checkpoint is complete)"
        sleep {{ int $root.Values.train.waitPollSeconds }}
      done
      echo "found $marker"
    - {{ $path }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      cpu: 100m
      memory: 64Mi
  volumeMounts:
    {{- include "motif-stage.volumeMounts" $root | nindent 4 }}
{{- end -}}
