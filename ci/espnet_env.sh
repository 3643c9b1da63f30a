#!/usr/bin/env bash
# Create (once) the virtualenv of ESPnet's SpeechLM release that contaudio is tested against, then install this
# checkout into it (editable, without touching the pinned packages). Usage: ci/espnet_env.sh ENV_DIR
# The environment is rebuilt only when requirements/espnet-*.txt, pyproject.toml or the Python version changes (a stamp file
# inside it records both), so a second run costs seconds. ESPNET_PYTHON=/path/to/python3.12 picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir="$1"
requirements="requirements/espnet-202611.txt"

find_python() {  # the first Python >= 3.12 (ESPnet's SpeechLM needs it): $ESPNET_PYTHON, PATH, then pyenv
  local candidate version
  for candidate in "${ESPNET_PYTHON:-}" python3.12 python3.13; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for version in $(pyenv versions --bare | grep -E '^3\.1[23](\.[0-9]+)?$' | sort -V); do
      candidate="$(pyenv root)/versions/$version/bin/python"
      if [ -x "$candidate" ]; then
        echo "$candidate"
        return
      fi
    done
  fi
  echo "no Python >= 3.12 found (ESPnet's SpeechLM needs it): install one, or pass ESPNET_PYTHON=/path/to/python3.12" >&2
  return 1
}

python="$(find_python)"
stamp="$("$python" --version 2>&1) $(cat "$requirements" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$env_dir/.contaudio-stamp" ] && [ "$(cat "$env_dir/.contaudio-stamp")" = "$stamp" ]; then
  echo "ESPnet environment $env_dir is up to date ($stamp)"
else
  echo "creating the ESPnet environment in $env_dir with $python (a few minutes, once)"
  rm -rf "$env_dir"
  "$python" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install --quiet --upgrade pip
  # one resolver pass: ESPnet's pins and contaudio's own requirements together (contaudio's lower bounds must admit
  # ESPnet's pins; a conflict fails here, not at import time)
  "$env_dir/bin/python" -m pip install --quiet -r "$requirements" -e .
  echo "$stamp" > "$env_dir/.contaudio-stamp"
fi
# contaudio itself: editable, no dependency changes (its own requirements must already be met by ESPnet's pins)
"$env_dir/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$env_dir/bin/python" -m pip check
