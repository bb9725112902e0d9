#!/usr/bin/env bash
# One entry point for people and CI.
#   ./manage.sh demo    install, build the tiny model (cached), start Label Studio + S3 + backend with a demo project
#   ./manage.sh test    install (with test tools and Label Studio), then run the whole test suite
#   ./manage.sh setup   only install the project's virtual environment (.venv)
#   ./manage.sh tiny-model   only build (or reuse) the tiny trained DAM
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
# OpenMP threads that spin while waiting slow a shared 2-core machine down by an order of magnitude.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
VENV=.venv
LS_VENV=${LS_VENV:-.venv-ls}
LS_VERSION=1.23.2

stamp_ok() {  # $1 venv, $2.. files whose content decides the install
  local want; want=$(cat "${@:2}" | sha256sum | cut -c1-16)
  [ -f "$1/.installed" ] && [ "$(cat "$1/.installed")" = "$want" ]
}
stamp_write() { cat "${@:2}" | sha256sum | cut -c1-16 > "$1/.installed"; }

setup_venv() {  # $1 = requirements file
  if stamp_ok "$VENV" "$1" requirements.txt; then return; fi
  echo "==> installing $1 into $VENV (torch is large: a few minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # sam2 compiles an optional CUDA extension unless told not to; it works without it.
  SAM2_BUILD_CUDA=0 "$VENV/bin/pip" install -q -r "$1"
  stamp_write "$VENV" "$1" requirements.txt
}

setup_label_studio() {  # Label Studio pins clash with model code: it gets its own venv
  if [ -x "$LS_VENV/bin/label-studio" ] && stamp_ok "$LS_VENV" manage.sh; then return; fi
  echo "==> installing Label Studio $LS_VERSION into $LS_VENV"
  [ -x "$LS_VENV/bin/python" ] || "$PY" -m venv "$LS_VENV"
  "$LS_VENV/bin/pip" install -q "label-studio==$LS_VERSION"
  stamp_write "$LS_VENV" manage.sh
}

tiny_model() { "$VENV/bin/python" -m scripts.build_tiny_model "$@"; }

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup_venv requirements.txt ;;
  tiny-model) setup_venv requirements.txt; tiny_model "$@" ;;
  demo)
    setup_venv requirements-dev.txt   # moto's S3 server stands in for MinIO locally
    setup_label_studio
    tiny_model
    exec "$VENV/bin/python" -m scripts.demo "$@" ;;
  test)
    setup_venv requirements-dev.txt
    setup_label_studio
    export LABEL_STUDIO_BIN="$PWD/$LS_VENV/bin/label-studio"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    [ "$rc" -eq 5 ] && { echo "no tests collected"; exit 1; }
    exit "$rc" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
