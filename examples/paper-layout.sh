#!/bin/sh
# The paper's model (examples/seq2seq-paper.yaml: 384M parameters, 4 stages
# and 4 softmax slices) with every role its own process on this machine:
# NATS and etcd (downpour servers), a coordinator, 8 parameter-server shards
# and the replica's 8 seats, each under /usr/bin/time, on the generated
# corpus synthetic:wmt. At the end it prints each role's peak RSS and CPU,
# and what each seat sent and waited (from its /metrics). docs/layout.md
# gives the figures of a run.
#
#   examples/paper-layout.sh [steps] [output directory]
#
# Each role's Go heap may grow to twice what it holds (GOGC=100); DOWNPOUR_GOGC
# sets GOGC for every role (default 50). DOWNPOUR_STAGES and DOWNPOUR_SLICES
# lay the replica out otherwise than the file's 4 and 4 (a seat a process).
# DOWNPOUR_DATA trains on a corpus file instead of synthetic:wmt (for
# example the 12M pairs 'downpour corpus --pairs 12000000' writes); with
# DOWNPOUR_DATA_TARGET, on aligned files (DOWNPOUR_DATA the source side).
set -eu
steps=${1:-10}
out=${2:-runs/paper-layout-$(date +%Y%m%d-%H%M%S)}
. "$(dirname "$0")/roles.sh"
build_into "$out"
export GOGC="${DOWNPOUR_GOGC:-50}"
stages=${DOWNPOUR_STAGES:-4}
slices=${DOWNPOUR_SLICES:-4}
seats=$((stages + slices))
start_servers
job=paper-layout
port=19100
for i in 0 1 2 3 4 5 6 7; do
	timed "ps-$i" "$bin" ps $EP --job $job --shard "$i" --data-dir "$out/ps-$i" --http "127.0.0.1:$((port + i))"
done
for i in $(seq 0 $((seats - 1))); do
	timed "seat-$i" "$bin" worker $EP --job $job --id "seat-$i" --http "127.0.0.1:$((port + 10 + i))"
done
# The file's epochs and halving schedule need a corpus with an end, and its
# 8 replicas of 8 seats would be 64 workers: the flags beside it say so.
timed coordinator "$bin" coordinator -v $EP --config "$here/examples/seq2seq-paper.yaml" --job $job \
	--data "${DOWNPOUR_DATA:-synthetic:wmt}" ${DOWNPOUR_DATA_TARGET:+--data-target "$DOWNPOUR_DATA_TARGET"} --epochs 0 --lr-halve-after-epochs 0 --lr-halve-every-epochs 0 --steps "$steps" \
	--workers 1 --stages "$stages" --softmax-slices "$slices" \
	--log-every 1 --eval-every 0 --held-out 0 --checkpoint-every 0 --out "$out/run"
coord=$!
# Scrape each seat's counters while it runs (they go with it).
while kill -0 "$coord" 2>/dev/null; do
	for i in $(seq 0 $((seats - 1))); do
		curl -s -m 2 "http://127.0.0.1:$((port + 10 + i))/metrics" >"$out/seat-$i.metrics.tmp" 2>/dev/null &&
			mv "$out/seat-$i.metrics.tmp" "$out/seat-$i.metrics" || true
	done
	sleep 10
done
wait "$coord" || true
sleep 5
stop_servers
wait || true
{
printf '%-12s %10s %8s %14s %12s %5s\n' role peak_rss_MB cpu_s seat_sent_MB seat_wait_s seat
for f in "$out"/*.time; do
	name=$(basename "$f" .time)
	rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f", $2/1024}' "$f")
	cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.1f", u+s}' "$f")
	sent=-
	waited=-
	seat=-
	if [ -f "$out/$name.metrics" ]; then
		sent=$(awk '/^downpour_seat_sent_bytes_total/ {printf "%.0f", $2/1e6}' "$out/$name.metrics")
		waited=$(awk '/^downpour_seat_wait_seconds_total/ {printf "%.1f", $2}' "$out/$name.metrics")
		seat=$(sed -n 's/^downpour_seat_wait_seconds_total{.*seat="\([0-9]*\)".*/\1/p' "$out/$name.metrics")
	fi
	printf '%-12s %10s %8s %14s %12s %5s\n' "$name" "$rss" "$cpu" "$sent" "$waited" "$seat"
done
} | tee "$out/roles.txt"
grep -h "^done:" "$out/coordinator.log" || tail -5 "$out/coordinator.log"
