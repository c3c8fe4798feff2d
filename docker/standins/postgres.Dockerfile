# Stand-in for the official postgres image: Debian's PostgreSQL on a debootstrapped bookworm, with an entrypoint
# that honours the same variables (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA) on first start.
ARG BASE=knowngood-standin/debian:bookworm
FROM ${BASE}
ENV LANG=C.UTF-8
# Unpinned, like the upstream images: a stand-in tracks bookworm's current packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/postgresql/*/bin /usr/lib/postgresql/bin
ENV PATH=/usr/lib/postgresql/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
