# $1 python, $2 venv, $3 wheel, then pip options. Prints "installed" or "unchanged".
# The wheel's sha256 is stamped in the venv: an unchanged wheel is not reinstalled (llama-cpp-python
# compiles on the device, minutes on a Pi 5).
py=$1 venv=$2 wheel=$3; shift 3
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 3)' 2>/dev/null || {
  echo "$py is missing or older than Python 3.11; install Python >= 3.11 or set edgekit_python" >&2; exit 93; }
sum=$(sha256sum < "$wheel") || exit 91
sum=${sum%% *}
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.edgekit-wheel" 2>/dev/null)" = "$sum" ]; then echo unchanged; exit 0; fi
[ -x "$venv/bin/python" ] || "$py" -m venv -- "$venv" || {
  echo "cannot create a venv with $py -m venv (on Debian: apt install python3-venv)" >&2; exit 94; }
# llama.cpp's -march=native build crashes in ggml's AMX path on some x86 Xeons; ARM and Apple build native.
case "$(uname -m)" in x86_64|amd64) CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF}; export CMAKE_ARGS;; esac
"$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" "$wheel[runtime]" || exit 95
"$venv/bin/python" -m pip install --disable-pip-version-check -q --force-reinstall --no-deps "$@" "$wheel" || exit 95
echo "$sum" > "$venv/.edgekit-wheel"
echo installed
