# One image for every Bronco process (web, workers, beat, listener, Flower) and the OpenD
# simulator; docker-compose.yml picks the command. anvil and OpenBao use their own images.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 bronco && mkdir -p /app/var /data \
    && chown -R bronco /app/var /data
USER bronco

EXPOSE 8000 5555 11111 11112
CMD ["python", "manage.py", "runserver", "0.0.0.0:8000", "--noreload"]
