# A xenlike host in a container: `docker compose up` runs `xenlike up` on the default cluster.
FROM python:3.11-slim

# libatomic gives the rings their fence and compare-and-swap (see xenlike/public/atomic.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libatomic1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/xenlike
COPY pyproject.toml README.md ./
COPY xenlike ./xenlike
COPY dom0 ./dom0
COPY domu ./domu
RUN pip install --no-cache-dir .

ENV XENLIKE_RUN_DIR=/run/xenlike
VOLUME ["/run/xenlike"]
STOPSIGNAL SIGINT
ENTRYPOINT ["xenlike"]
CMD ["up"]
