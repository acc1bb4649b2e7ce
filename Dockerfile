# Backtalk voice agent. Build: docker build -t backtalk .
# Run in a Daily room (WebRTC from a container needs UDP port mapping; Daily does not):
#   docker run --rm --env-file .env -v backtalk-data:/data backtalk talk https://youtu.be/ID --transport daily
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BACKTALK_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY backtalk ./backtalk
RUN pip install . && mkdir -p /data

VOLUME ["/data"]
EXPOSE 7860
ENTRYPOINT ["backtalk"]
CMD ["--help"]
