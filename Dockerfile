# One image for every tripmesh process; docker-compose.yml picks the process with `command:`.
#
#   docker build -t tripmesh .
#   docker run --rm -p 50050:50050 tripmesh              # the coordinator (the default command)
#   docker run --rm tripmesh python -m services.flight   # any other process
#
# The builder stage makes the wheel (setup.py generates the tripmesh.v1 stubs with grpcio-tools, which
# only the build needs); the runtime stage installs that wheel and its dependencies, nothing else.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRIPMESH_VAR_DIR=/data \
    TRIPMESH_HOST=0.0.0.0
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --no-create-home tripmesh \
    && mkdir -p /data/mail && chown -R tripmesh /data
USER tripmesh
# Not the source tree: every module is imported from the installed package.
WORKDIR /data
EXPOSE 50050 50051 50052 50053 50054 2525
CMD ["python", "-m", "coordinator"]
