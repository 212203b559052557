# Production image of the portal. One image runs every role (see docker-compose.yml):
#   web     uvicorn fastgpt_portal.asgi:application   (the default CMD)
#   worker  celery -A fastgpt_portal worker --pool threads --concurrency N
#   beat    celery -A fastgpt_portal beat
#   migrate python manage.py migrate --noinput
# Settings come from the environment at run time (.env.example lists them); none is baked in.

# The Python of .python-version (3.12), on the Debian release whose glibc every pinned wheel in
# requirements.lock supports (bookworm: glibc 2.36), so nothing is compiled at build time.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The unprivileged user the processes run as (see USER below).
RUN useradd --system --create-home --uid 10001 --user-group portal

WORKDIR /app

# Runtime dependencies only, every one pinned by hash; this layer is reused until the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-cache-dir -r requirements.lock

COPY . .

# Static files are collected at build time (whitenoise serves them with hashed names). The settings
# refuse to import outside DEBUG without SECRET_KEY and FIELD_ENCRYPTION_KEY, so this one command
# gets throwaway values inline: they live only in this RUN's environment, not in any ENV of the
# image. The Fernet key is 32 zero bytes, valid in form and useless as a secret.
RUN DEBUG=false \
    SECRET_KEY=build-only-collectstatic-placeholder-not-a-secret-0123456789 \
    FIELD_ENCRYPTION_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
    python manage.py collectstatic --noinput

# Run as an unprivileged user (numeric, so that runAsNonRoot-style checks can verify it). The code
# stays root-owned and read-only for it; anything written at run time goes to /tmp (celery beat's
# schedule file, see docker-compose.yml) or to the services.
USER 10001:10001

EXPOSE 8000

CMD ["uvicorn", "fastgpt_portal.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
