# The Facemint API image (used by docker-compose.yml for both `migrate` and `api`).
FROM python:3.11-slim

# Production unless told otherwise: prod refuses missing or built-in secrets and closes /docs and /metrics.
ENV FACEMINT_ENV=prod \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY platform/ platform/
COPY billing/ billing/
COPY inference/ inference/
COPY migrations/ migrations/
COPY admin_ui/ admin_ui/

# `pip install .`, as an editable install: facemint finds alembic.ini, migrations/ and admin_ui/ two levels above
# its own source (facemint.migrate.ROOT, facemint.app.ADMIN_UI_DIR), which a copy in site-packages would not.
# Every dependency is a wheel (psycopg2-binary among them), so no compiler is needed.
# The engine's runtime as the Makefile installs it: one onnxruntime flavour (ORT=cpu or gpu) and insightface
# without its own dependencies (they would pull the GUI OpenCV and a second onnxruntime), then a check.
ARG ORT=cpu
RUN pip install -e ".[${ORT}]" \
    && pip install --no-deps insightface==2.1 \
    && python -m inference.install --check \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin facemint \
    && mkdir -p /data/storage /data/models \
    && chown -R facemint /data

USER facemint

EXPOSE 8000

# FACEMINT_ENV=prod refuses to start without FACEMINT_JWT_SECRET and FACEMINT_API_KEY_PEPPER (32+ characters);
# `serve` also refuses the built-in secrets on anything but loopback, whatever FACEMINT_ENV says.
CMD ["facemint", "serve", "--host", "0.0.0.0", "--port", "8000"]
