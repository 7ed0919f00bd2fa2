# One image for every Python process of the platform (web, worker, beat, broker, telemetry,
# agents); docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    INTERCONNECT_VAR_DIR=/var/lib/interconnect
WORKDIR /app

COPY pyproject.toml README.md ./
COPY interconnect ./interconnect
COPY registry ./registry
COPY verification ./verification
COPY brokers ./brokers
COPY agent ./agent
COPY protos ./protos
COPY templates ./templates
COPY static ./static
COPY manage.py Makefile ./

RUN pip install . \
 && python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto \
 && useradd --system --home /app interconnect \
 && mkdir -p /var/lib/interconnect && chown interconnect /var/lib/interconnect \
 && DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput -v0

USER interconnect
EXPOSE 8000 50051 50052
CMD ["gunicorn", "interconnect.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2"]
