#!/usr/bin/env bash
# Build .webwhl/ (gitignored) for bench/device/app.sh: gradio and the packages it needs that the lent GPU machines
# lack, as Python 3.12 x86-64 wheels, within the device tool's 64 MiB carry limit. gradio's own wheel (31 MB, 80 MB
# installed) is carried as a trimmed tarball: its front-end bundle (templates/, media_assets/) is dropped, which the
# benchmark does not need (it clicks through gradio_client's API, not a browser). Run on a machine with PyPI:
#   bash bench/device/make_webwhl.sh && du -sh .webwhl
set -euo pipefail
GRADIO=${GRADIO:-6.31.0}
rm -rf .webwhl && mkdir -p .webwhl
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$1" "${@:2}"; }
dl .webwhl brotli fastapi gradio-client groovy hf-gradio orjson pydantic==2.13.4 pydantic-core==2.46.4 annotated-types \
  typing-inspection pydub python-multipart safehttpx semantic-version starlette "tomlkit<0.15" uvicorn \
  annotated-doc opentelemetry-api importlib-metadata zipp pytz
tmp=$(mktemp -d)
dl "$tmp" "gradio==$GRADIO"
(cd "$tmp" && unzip -q gradio-*.whl && rm gradio-*.whl && find gradio/templates gradio/media_assets -type f -size +20k -delete \
  && rm -f gradio/CHANGELOG.md && tar czf gradio_trimmed.tar.gz gradio gradio-*.dist-info)
mv "$tmp/gradio_trimmed.tar.gz" .webwhl/ && rm -rf "$tmp"
