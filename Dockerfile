# One image for every Python process of the stack (api, workers, history, console, jobs).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY api api
COPY streams streams
COPY providers providers
COPY billing billing
COPY reconciler reconciler
COPY analytics analytics
COPY dashboard dashboard
RUN pip install --no-cache-dir .
USER nobody
