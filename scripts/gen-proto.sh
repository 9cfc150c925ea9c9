#!/usr/bin/env bash
# Regenerate the Python modules of proto/northpole/v1/*.proto into src/northpole/v1/.
# The generated files are committed; run this after changing a .proto file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I proto --python_out=src --pyi_out=src proto/northpole/v1/*.proto
touch src/northpole/v1/__init__.py
