# churnwatch application image (worker, dispatcher, archiver, simulator, CLI).
# The builder turns the checkout into a wheel; the image installs only that wheel
# (code, default settings and web assets are its package data), so no source is
# copied into it. Dependencies are pinned by requirements.lock (regenerate with
# `pip freeze --exclude-editable` from a fresh `pip install .`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 churnwatch
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
# (with the PostgreSQL driver: a team's ledger is PostgreSQL, alerts.ledger_url)
RUN pip install --no-cache-dir -c /tmp/requirements.lock \
      "$(ls /tmp/wheels/*.whl)[postgres]" \
    && rm -rf /tmp/wheels /tmp/requirements.lock \
    && mkdir -p /data /models /archive /ledger \
    && chown churnwatch /data /models /archive /ledger
USER churnwatch
WORKDIR /data
CMD ["churnwatch", "--help"]
