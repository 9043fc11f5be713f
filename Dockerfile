# nerf_dist on a CUDA machine. Build: docker build -t nerf-dist .
# Run:   docker run --gpus all --ipc=host -v $PWD/data:/data nerf-dist \
#          torchrun --nproc_per_node=4 -m nerf_dist train --config configs/lego.yaml data.root=/data/lego
# The base image brings a CUDA build of PyTorch; pip keeps it (pyproject does not pin torch).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/nerf_dist
COPY pyproject.toml README.md ./
COPY nerf_dist ./nerf_dist
COPY configs ./configs
COPY launch ./launch
COPY slurm ./slurm
RUN pip install ".[video,s3]" && nerf-dist --help >/dev/null
# NOTE: no credentials are baked in: pass AWS_* (or mount ~/.aws) at run time.
CMD ["nerf-dist", "--help"]
