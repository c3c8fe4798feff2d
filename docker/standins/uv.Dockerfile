# Stand-in for ghcr.io/astral-sh/uv:<tag>: the uv and uvx binaries from uv's PyPI wheel, at the paths the
# upstream image has them (/uv, /uvx). The build context is a directory holding the two binaries.
FROM scratch
COPY uv uvx /
ENTRYPOINT ["/uv"]
