# Stand-in for python:3.11-slim-bookworm where no container registry can be reached: Debian's own Python 3.11
# on a debootstrapped bookworm (see docker/standins/README.md). `python` on PATH, as in the upstream image.
ARG BASE=knowngood-standin/debian:bookworm
FROM ${BASE}
ENV LANG=C.UTF-8
# Unpinned, like the upstream images: a stand-in tracks bookworm's current packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
