FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY detectors ./detectors
RUN pip install --no-cache-dir .
COPY driftwatch.toml ./
USER nobody
ENTRYPOINT ["driftwatch"]
CMD ["worker"]
