# One image for every Photon role: aggregator, silo agent, link emulator, CA init.
FROM python:3.11-slim
WORKDIR /opt/photon
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# The CPU wheel first, so the torch requirement does not pull a CUDA build. For GPU silos,
# build with --build-arg TORCH_SPEC="torch==2.13.0" on a CUDA base image instead.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY photon ./photon
COPY aggregator ./aggregator
COPY silo_agent ./silo_agent
COPY bandwidth ./bandwidth
RUN pip install .
ENTRYPOINT ["photon"]
CMD ["--help"]
