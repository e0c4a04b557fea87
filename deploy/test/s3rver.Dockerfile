# The S3 stand-in for MinIO in `make test-deploy`: npm's s3rver, which keeps objects on disk,
# so `docker compose down && up` keeps the checkpoints. Built by deploy/test/setup.sh.
ARG BASE
FROM ${BASE}
RUN command -v node >/dev/null || (apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs \
        && rm -rf /var/lib/apt/lists/*)
COPY node_modules /opt/s3rver/node_modules
RUN groupadd --system --gid 10002 s3rver \
    && useradd --system --uid 10002 --gid s3rver --home-dir /data --create-home --shell /usr/sbin/nologin s3rver
USER 10002:10002
VOLUME /data
EXPOSE 9000
# --no-vhost-buckets: behind the name `minio`, s3rver would read the Host header as a bucket.
ENTRYPOINT ["node", "/opt/s3rver/node_modules/s3rver/bin/s3rver.js"]
CMD ["-d", "/data", "-a", "0.0.0.0", "-p", "9000", "--no-vhost-buckets"]
