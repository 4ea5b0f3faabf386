#!/usr/bin/env bash
# One-step set-up on a fresh machine: the offline Fashion-MNIST (Debian's
# dataset-fashion-mnist, where apt exists) and tfadv with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
  $SUDO apt-get update -qq || echo "setup: apt-get update failed; continuing"
  $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "setup: could not install dataset-fashion-mnist; set TFADV_DATA_DIR"
fi

# The interpreter the README's commands run (`python`), else python3.
PYTHON=$(command -v python || command -v python3)
# TensorFlow from the cpu extra, unless the environment has its own (a GPU
# build, say): then that one is kept and no tensorflow-cpu joins it.
EXTRAS="cpu,test"
if "$PYTHON" -c "import importlib.metadata as m; m.version('tensorflow')" \
    >/dev/null 2>&1; then
  EXTRAS="test"
fi
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
