{{/*
Pod template of the training replicas (Master and Worker are identical; the operator sets the
rank). motif-torchrun is torchrun (same arguments) that gives the workers the pod's grace period
to checkpoint on SIGTERM and exits 143 when stopped: it reads PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT injected by the operator, so the command carries
no launcher arguments.
*/}}
{{- define "motif-stage.trainPodSpec" -}}
{{- include "motif-stage.trainPodSpecFor" (dict "root" . "command" (list "motif-torchrun" "-m" "motif" "train" "/etc/motif/stage.yaml") "args" .Values.train.args) -}}
{{- end -}}

{{- define "motif-stage.trainPodSpecFor" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $procs := int (include "motif-stage.procsPerNode" $root) -}}
{{- /* Without the growth Job, rank 0 grows the checkpoint itself: nothing to wait for then. */}}
{{- $start := "" -}}
{{- if not $v.motif.growth -}}
{{- $start = include "motif-stage.startCheckpoint" $root -}}
{{- else if $v.grow.enabled -}}
{{- $start = include "motif-stage.startCheckpoint" $root -}}
{{- end -}}
serviceAccountName: {{ include "motif-stage.serviceAccountName" $root }}
automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
{{- if $v.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if $v.schedulerName }}
schedulerName: {{ $v.schedulerName }}
{{- else if eq $v.gang.scheduler "volcano" }}
schedulerName: volcano
{{- else if eq $v.gang.scheduler "scheduler-plugins" }}
schedulerName: scheduler-plugins-scheduler
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
terminationGracePeriodSeconds: {{ include "motif-stage.graceSeconds" $root }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- if and $v.train.waitForStart $start }}
initContainers:
  {{- include "motif-stage.waitContainer" (list $root $start) | nindent 2 }}
{{- end }}
containers:
  - name: pytorch
    image: {{ include "motif-stage.image" $root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    workingDir: {{ $v.workingDir }}
    command:
      {{- toYaml .command | nindent 6 }}
    {{- with .args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    env:
      {{- include "motif-stage.env" $root | nindent 6 }}
      - name: MOTIF_GRACE_SECONDS
        value: {{ include "motif-stage.graceSeconds" $root | quote }}
      {{- range $k, $val := $v.ncclEnv }}
      - name: {{ $k }}
        value: {{ toString $val | quote }}
      {{- end }}
    ports:
      - name: pytorchjob-port
        containerPort: {{ int $v.pytorchjob.masterPort }}
        protocol: TCP
      - name: metrics
        containerPort: {{ include "motif-stage.metricsPort" $root }}
        protocol: TCP
    resources:
      requests:
        {{- with $v.resources.requests }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if eq (include "motif-stage.device" $root) "cuda" }}
        {{ $v.gpu.resourceName }}: {{ $procs }}
        {{- end }}
        {{- if $v.rdma.enabled }}
        {{ $v.rdma.resourceName }}: {{ int $v.rdma.count }}
        {{- end }}
      limits:
        {{- with $v.resources.limits }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if eq (include "motif-stage.device" $root) "cuda" }}
        {{ $v.gpu.resourceName }}: {{ $procs }}
        {{- end }}
        {{- if $v.rdma.enabled }}
        {{ $v.rdma.resourceName }}: {{ int $v.rdma.count }}
        {{- end }}
    securityContext:
      {{- $sc := deepCopy $v.securityContext }}
      {{- if and $v.rdma.enabled $v.rdma.ipcLock }}
      {{- $_ := set $sc "capabilities" (dict "drop" (list "ALL") "add" (list "IPC_LOCK")) }}
      {{- end }}
      {{- toYaml $sc | nindent 6 }}
    volumeMounts:
      {{- include "motif-stage.volumeMounts" $root | nindent 6 }}
      - name: shm
        mountPath: /dev/shm
volumes:
  {{- include "motif-stage.volumes" $root | nindent 2 }}
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.shmSize }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Labels and annotations of the training pods; (list $ "master"|"worker"). Only the master pod runs
rank 0, the one rank that serves metrics: the PodMonitor selects it by `motif/replica`.
*/}}
{{- define "motif-stage.trainPodMeta" -}}
{{- $root := index . 0 -}}
labels:
  {{- include "motif-stage.labels" $root | nindent 2 }}
  app.kubernetes.io/component: trainer
  motif/replica: {{ index . 1 }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  sidecar.istio.io/inject: "false"
  checksum/stage-config: {{ dict "motif" $root.Values.motif | toYaml | sha256sum }}
  {{- with $root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
