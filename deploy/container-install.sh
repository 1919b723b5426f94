#!/bin/sh
# Installs indextts-server with the extras $2 ("[indextts,cluster,zeroconf]") into /opt/venv, inside a
# container build (see the Dockerfile). When the folder $1 holds wheels, only they are used and
# no package index is contacted; otherwise the source tree in /src is installed from the index.
set -eu
wheels=$1 extras=$2
python -m venv /opt/venv
if ls "$wheels"/*.whl >/dev/null 2>&1; then
    /opt/venv/bin/pip install --no-index --find-links "$wheels" "indextts-server$extras"
else
    /opt/venv/bin/pip install "/src$extras"
fi
