# motif GPU trainer image: CUDA PyTorch + DeepSpeed (ops compiled ahead of time) + motif.
#   podman build -t ghcr.io/motif-llm/motif:0.1.0-cuda .      (or docker build)
# The CUDA PyTorch base images are build arguments; their torch must be the version pinned in
# requirements.lock (2.13.0), which the build checks.
ARG TORCH_DEVEL_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel
ARG TORCH_RUNTIME_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# ---- build: wheels of DeepSpeed (with its CUDA ops compiled) and of motif ---------------------
FROM ${TORCH_DEVEL_IMAGE} AS build
ARG DEEPSPEED_VERSION=0.19.8
# Ampere (A100) and Hopper (H100/H200).
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
SHELL ["/bin/bash", "-eu", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_UTILS=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
RUN python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else f'base image torch {v}, want 2.13.0')" \
    && grep -v -i '^torch==' requirements.lock | sed -E 's/\[[^]]*\]//' > /src/constraints.txt \
    && pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels "deepspeed==${DEEPSPEED_VERSION}"
COPY motif/ motif/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime: CUDA runtime base, the wheels, a non-root user ---------------------------------
FROM ${TORCH_RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="motif" \
      org.opencontainers.image.description="motif: grow an open Llama 3 and train each growth stage (CUDA build)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/motif-llm/motif" \
      org.opencontainers.image.vendor="motif"
SHELL ["/bin/bash", "-eu", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
COPY --from=build /src/constraints.txt /wheels/constraints.txt
# torch stays the base image's CUDA build: the constraints pin everything else, and the check
# fails the build if a dependency replaced torch.
# The kubernetes client (pinned by the constraints) for `motif status` and `motif preflight`
# (the chart's `helm test` hook) inside the cluster.
RUN pip install --no-cache-dir --constraint /wheels/constraints.txt /wheels/*.whl "$(grep -i '^kubernetes==' /wheels/constraints.txt)" \
    && python -c "import torch, deepspeed, motif; assert torch.version.cuda, 'torch lost its CUDA build'" \
    && rm -rf /wheels \
    && groupadd --gid 10001 motif \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp/home --no-create-home --shell /usr/sbin/nologin motif \
    && mkdir -p /workspace \
    && chown 10001:10001 /workspace
# The root filesystem is read-only in the pods: HOME and every cache live under /tmp (an emptyDir).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp/home \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HOME=/tmp/cache/huggingface \
    TORCH_EXTENSIONS_DIR=/tmp/cache/torch_extensions \
    TRITON_CACHE_DIR=/tmp/cache/triton \
    MPLCONFIGDIR=/tmp/cache/matplotlib
USER 10001:10001
WORKDIR /workspace
# A batch trainer has no endpoint to probe: no HEALTHCHECK (Kubernetes ignores it anyway).
HEALTHCHECK NONE
CMD ["motif", "--help"]
