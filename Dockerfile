# churnwatch application image (worker, dispatcher, archiver, simulator, CLI).
# Dependencies are pinned by requirements.lock (regenerate with
# `pip freeze --exclude-editable` from a fresh `pip install .`).
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 churnwatch
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY churnwatch ./churnwatch
COPY pipeline ./pipeline
COPY producers ./producers
COPY consumers ./consumers
COPY models ./models
COPY configs ./configs
RUN pip install --no-cache-dir -c requirements.lock . \
    && mkdir -p /data /models /archive /ledger \
    && chown churnwatch /data /models /archive /ledger
ENV CHURNWATCH_CONFIG=/app/configs/default.yaml
USER churnwatch
CMD ["churnwatch", "--help"]
