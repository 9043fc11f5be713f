# nerf_dist on CUDA machines: PyTorch's CUDA runtime image + nerf_dist[video,s3], run as a
# non-root user. No Docker engine runs in this project's CI: the file is linted (hadolint,
# tests/test_dockerfile.py), not built there.
#
# Build:  docker build -t nerf-dist .
# Run (workstation, all GPUs; the code is in /opt/nerf_dist, /work is for runs and data):
#   docker run --rm --gpus all --ipc=host -v "$PWD/data:/data:ro" -v "$PWD/runs:/work/runs" \
#     nerf-dist /opt/nerf_dist/launch/train.sh --config /opt/nerf_dist/configs/lego.yaml \
#     data.root=/data/lego run.dir=/work/runs/lego
# (or torchrun itself: ... nerf-dist torchrun --nproc_per_node=4 -m nerf_dist train --config ...)
# NOTE: --ipc=host (or a large --shm-size, e.g. --shm-size=16g): torch.distributed and NCCL
# exchange data through /dev/shm, and Docker's default 64 MB makes multi-GPU runs fail or crawl.
# Run as your own user so files in the mounted folders stay yours: add --user "$(id -u):$(id -g)".
# Storage credentials: pass -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY (or mount ~/.aws
# read-only); none is baked into the image.
#
# SLURM with a container plugin (pyxis/enroot): import once, then srun in the container:
#   enroot import -o nerf-dist.sqsh dockerd://nerf-dist      (or docker://REGISTRY#nerf-dist)
#   srun --container-image=./nerf-dist.sqsh --container-mounts=/data:/data,$PWD/runs:/work/runs \
#     --container-workdir=/work python -m torch.distributed.run --nnodes=$SLURM_JOB_NUM_NODES \
#     --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=FIRST_NODE:29555 \
#     -m nerf_dist train --config /opt/nerf_dist/configs/lego.yaml data.root=/data/lego
# pyxis runs the container as the submitting user and shares the host's IPC namespace, so the
# non-root user and --ipc=host need nothing more there.
#
# NOTE: torch 2.13's torchrun has both --signals_to_handle (so SIGUSR1 from SLURM reaches the
# ranks; torch >= 2.9) and --shutdown_timeout (time to write the checkpoint before SIGKILL), which
# launch/train.sh uses where present.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NERF_DIST_NO_VENV=1

WORKDIR /opt/nerf_dist
# NOTE: the package first and the scripts after it, so editing a script keeps the pip layer.
COPY pyproject.toml README.md ./
COPY nerf_dist ./nerf_dist
# NOTE: pip keeps the image's CUDA build of torch (pyproject does not pin torch).
RUN pip install --no-cache-dir "/opt/nerf_dist[video,s3]" \
    && python -c "import torch, nerf_dist; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && nerf-dist --help >/dev/null
COPY configs ./configs
COPY launch ./launch
COPY slurm ./slurm

# NOTE: uid 10001, clear of the uid 1000 some base images already give a user (ubuntu).
RUN groupadd --gid 10001 nerf \
    && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash nerf \
    && mkdir -p /work \
    && chown nerf:nerf /work
USER 10001:10001
WORKDIR /work
CMD ["nerf-dist", "--help"]
