# $1 state dir, $2 fingerprint (what is served and how), then the serve command. Without a systemd
# user manager (containers, a test sshd): a setsid'd nohup process, its pid in serve.pid. A server
# already running with the same fingerprint is left alone ("unchanged"); otherwise the old one gets
# SIGTERM (requests in flight finish) and this one starts ("started").
dir=$1 fp=$2; shift 2
mkdir -p "$dir" || exit 1
if [ -f "$dir/serve.pid" ]; then
  old=$(cat "$dir/serve.pid")
  if kill -0 "$old" 2>/dev/null && [ "$(cat "$dir/serve.fingerprint" 2>/dev/null)" = "$fp" ]; then echo unchanged; exit 0; fi
  if kill -TERM "$old" 2>/dev/null; then
    i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  fi
  rm -f "$dir/serve.pid"
fi
if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi
nohup $s "$@" >"$dir/serve.log" 2>&1 </dev/null &
echo $! >"$dir/serve.pid"
echo "$fp" >"$dir/serve.fingerprint"
echo started
