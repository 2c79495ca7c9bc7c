# hybrid-ray runtime image: Ray 2.60 + CUDA, the project installed with its pinned constraints and
# FAISS on the GPU. Used by k8s/*.yaml (KubeRay) and optionally by cluster/gpu.yaml.
#
#   docker build -t ghcr.io/<org>/hybrid-ray:0.1.0 .
#   docker push ghcr.io/<org>/hybrid-ray:0.1.0
#
# Built only from this repository's files (see .dockerignore). Runs as uid 1000 (the base image's
# `ray` user, group 100), so the pods' runAsNonRoot / runAsUser: 1000 hold.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

# faiss-gpu-cu12 provides the same `faiss` module as faiss-cpu (a hard dependency in
# pyproject.toml): installing both leaves one overwriting the other's files. So: install the
# project (brings faiss-cpu), remove faiss-cpu, then install faiss-gpu-cu12 into the clean slot.
ARG FAISS_GPU_VERSION=1.14.1.post1

USER root
RUN mkdir -p /app /mnt/shared && chown 1000:100 /app /mnt/shared
USER 1000:100
WORKDIR /app

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/home/ray/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/home/ray/.cache/torch_extensions

# Dependency layer first (changes rarely): metadata + pins only.
COPY --chown=1000:100 pyproject.toml constraints.txt README.md ./
COPY --chown=1000:100 hybrid_ray ./hybrid_ray
COPY --chown=1000:100 tune ./tune
COPY --chown=1000:100 serve ./serve
COPY --chown=1000:100 bench ./bench

# constraints.txt pins torch / ray / deepspeed / transformers / pyarrow; the torch pin resolves to
# the CUDA wheel from PyPI on linux x86_64. The `gpu` extra (faiss-gpu-cu12) is installed
# separately, after faiss-cpu is gone (see above).
RUN pip install -c constraints.txt . \
 && pip uninstall -y faiss-cpu \
 && pip install -c constraints.txt "faiss-gpu-cu12==${FAISS_GPU_VERSION}" \
 && python -c "import faiss, hybrid_ray, ray; assert ray.__version__ == '2.60.0', ray.__version__" \
 && pip list 2>/dev/null | grep -i '^faiss'

# Scripts and docs are small and change often: last.
COPY --chown=1000:100 scripts ./scripts

EXPOSE 6379 8265 10001 8000 8080
# KubeRay and `ray up` override the command; this default just proves the install.
CMD ["python", "-c", "import hybrid_ray, faiss; print('hybrid-ray image OK; faiss GPUs:', faiss.get_num_gpus())"]
