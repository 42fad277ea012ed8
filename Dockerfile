# churnwatch application image (worker, simulator, CLI).
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 churnwatch
WORKDIR /app
COPY pyproject.toml README.md ./
COPY churnwatch ./churnwatch
COPY pipeline ./pipeline
COPY producers ./producers
COPY consumers ./consumers
COPY models ./models
COPY configs ./configs
RUN pip install --no-cache-dir . && mkdir -p /data && chown churnwatch /data
ENV CHURNWATCH_CONFIG=/app/configs/default.yaml
USER churnwatch
CMD ["churnwatch", "--help"]
