# syntax=docker/dockerfile:1.7
# The image the Helm chart runs: the `oubli` console script on PATH, as a non-root user, with a
# read-only root filesystem (the chart mounts /tmp as an emptyDir for export spooling).
#
#   docker buildx build --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg CREATED="$(date -u +%FT%TZ)" -t registry.example/privacy/oubli:0.1.0 .
#
# Reproducible: the base image is pinned by digest and every third-party package comes from
# requirements.lock, hash-checked (`make lock` updates it; docs/operations.md "Building the image").
# The lock and the oubli wheel are bind-mounted into the install step, so no wheel stays in a layer.
#
# tests/unit/test_packaging.py builds the same wheel and runs it in isolation from the checkout, so a
# file the wheel lacks (schemas, migrations) fails CI even where no container engine exists; it
# also checks this file's pins, lock use and user against the lock and the chart.

# python:3.11-slim-bookworm (Python 3.11.16, Debian 12 snapshot of 2026-08-24), the multi-platform
# index digest as recorded by docker-library/repo-info. To move it: read the new digest of the tag
# (`docker buildx imagetools inspect python:3.11-slim-bookworm`) and replace it here.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY connectors ./connectors
COPY schemas ./schemas
# Not devkit/ (the fakes, vendor stand-ins and sample data of the tests and the demo): the product never
# imports it, and tests/unit/test_packaging.py checks that the wheel holds none of it.
# Only oubli's own wheel: its dependencies come from the lock in the final stage. Its build backend
# is the setuptools the pinned base image ships (79.0.1, within build-system.requires), so nothing
# unpinned is fetched for it either.
RUN pip wheel --disable-pip-version-check --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="oubli" \
      org.opencontainers.image.description="Kafka-driven worker that carries out GDPR erasure and export requests." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# Bytecode is compiled at install time because the root filesystem is read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# --require-hashes: every package is the lock's exact file, and one the lock lacks fails the build.
# oubli itself goes in with --no-deps (its dependencies are already the lock's); `pip check` then
# proves the lock satisfies what oubli declares.
RUN --mount=type=bind,source=requirements.lock,target=/run/oubli/requirements.lock \
    --mount=type=bind,from=build,source=/wheels,target=/run/oubli/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --compile -r /run/oubli/requirements.lock \
    && pip install --no-deps --compile /run/oubli/wheels/oubli-*.whl \
    && pip check \
    && groupadd --system --gid 10001 oubli \
    && useradd --system --uid 10001 --gid oubli --no-create-home --home-dir /nonexistent oubli
USER 10001:10001
WORKDIR /tmp
# The chart sets OUBLI_CONFIG to its ConfigMap; "worker" is the Deployment's args.
ENTRYPOINT ["oubli"]
CMD ["worker"]
