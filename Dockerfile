# The image the Helm chart runs: the `oubli` console script on PATH, as a non-root user, with a
# read-only root filesystem (the chart mounts /tmp as an emptyDir for export spooling).
#
#   docker build -t registry.example/privacy/oubli:0.1.0 .
#
# tests/test_packaging.py builds the same wheel and runs it in isolation from the checkout, so a
# file the wheel lacks (schemas, migrations) fails CI even where no container engine exists.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY connectors ./connectors
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# Bytecode is compiled at install time because the root filesystem is read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels --compile oubli \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 oubli \
    && useradd --system --uid 10001 --gid oubli --no-create-home --home-dir /nonexistent oubli
USER 10001:10001
WORKDIR /tmp
# The chart sets OUBLI_CONFIG to its ConfigMap; "worker" is the Deployment's args.
ENTRYPOINT ["oubli"]
CMD ["worker"]
