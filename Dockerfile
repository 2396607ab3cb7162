# syntax=docker/dockerfile:1
# leadloop API image: `docker build -t leadloop .`, then run with LEADLOOP_* variables.
# The worker runs from the same image: `docker run … leadloop leadloop worker`.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/leadloop
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app
COPY connectors connectors
COPY qualification qualification
COPY reminders reminders
COPY kpi_engine kpi_engine
COPY webhooks webhooks
COPY sandbox sandbox
RUN /opt/leadloop/bin/pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 leadloop
COPY --from=build /opt/leadloop /opt/leadloop
ENV PATH=/opt/leadloop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LEADLOOP_ENV=production
USER leadloop
WORKDIR /home/leadloop
EXPOSE 8000
CMD ["leadloop", "serve", "--host", "0.0.0.0"]
