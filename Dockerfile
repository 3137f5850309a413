FROM python:3.11-slim
WORKDIR /srv/tollgate
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
COPY pricing ./pricing
RUN pip install -e .  # editable: pricing/ and migrations/ are found beside app/
RUN useradd --system tollgate
USER tollgate
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["tollgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
