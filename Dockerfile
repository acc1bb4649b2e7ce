# Backtalk server: the page, the API and the conversations (`backtalk serve`).
#   docker build -t backtalk .
#   docker compose up                     # with the official pgvector Postgres: compose.yaml
#   docker run --rm --env-file .env -p 7860:7860 backtalk serve --host 0.0.0.0
# WebRTC from a container needs its UDP ports reachable (run with --network host, or
# use Daily rooms: POST /api/sessions {"transport": "daily"}, which need no UDP here).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BACKTALK_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY backtalk ./backtalk
RUN pip install . && mkdir -p /data && useradd --create-home backtalk && chown backtalk /data
USER backtalk

VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"
ENTRYPOINT ["backtalk"]
CMD ["serve", "--host", "0.0.0.0"]
