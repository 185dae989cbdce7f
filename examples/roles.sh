# Shared by the examples that run every role of a job as its own process
# (sourced, not run). build_into DIR makes the output directory, sets $out
# to it, $here to the repository and $bin to the downpour binary it builds
# there; "timed NAME CMD..." runs CMD in the background under
# /usr/bin/time -v (NAME.time, NAME.log in $out), and start_servers starts
# NATS and etcd (downpour servers) on free ports, setting $EP to the roles'
# flags for them and $servers to their timed process.
build_into() {
	mkdir -p "$1"
	out=$(cd "$1" && pwd)
	here=$(cd "$(dirname "$0")/.." && pwd)
	bin="$out/downpour"
	(cd "$here" && go build -o "$bin" ./cmd/downpour)
}
timed() {
	name=$1
	shift
	/usr/bin/time -v -o "$out/$name.time" "$@" >"$out/$name.log" 2>&1 &
}
pick() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start_servers() {
	nport=$(pick)
	eport=$(pick)
	timed servers "$bin" servers --dir "$out/servers" --nats-port "$nport" --etcd-port "$eport"
	servers=$!
	sleep 3
	EP="--nats nats://127.0.0.1:$nport --etcd http://127.0.0.1:$eport"
}
# stop_servers ends the servers themselves, not the time that measures them.
stop_servers() { pkill -INT -P "$servers" || true; }
