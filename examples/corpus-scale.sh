#!/bin/sh
# A corpus file at a real corpus's scale, every role its own process: NATS
# and etcd (downpour servers), a coordinator, 2 parameter-server shards and
# W workers (W replicas of a small model: the data is what is measured),
# each under /usr/bin/time. At the end it prints each role's peak RSS and
# CPU, and what its passes over the corpus were (from its /metrics).
#
#   downpour corpus --pairs 12000000 --out wmt-12m.tsv    # 4.0 GB
#   examples/corpus-scale.sh wmt-12m.tsv [workers] [steps] [output directory]
#   examples/corpus-scale.sh synthetic:wmt ...   # the same job without a file
#
# The coordinator counts the corpus once (two passes) and stores the
# summary with the job; each worker indexes its own data shard (one pass)
# and reads its batches' lines from the file. docs/usage.md gives a run's
# figures.
set -eu
case $1 in
synthetic:*) data=$1 ;; # the same job on the generated stream, for comparison: no file at all
*) data=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") ;;
esac
workers=${2:-8}
steps=${3:-20}
out=${4:-runs/corpus-scale-$(date +%Y%m%d-%H%M%S)}
. "$(dirname "$0")/roles.sh"
build_into "$out"
start_servers
job=corpus-scale
port=19300
for i in 0 1; do
	timed "ps-$i" "$bin" ps $EP --job $job --shard "$i" --data-dir "$out/ps-$i" --http "127.0.0.1:$((port + i))"
done
for i in $(seq 0 $((workers - 1))); do
	timed "worker-$i" "$bin" worker $EP --job $job --id "worker-$i" --http "127.0.0.1:$((port + 10 + i))"
done
# The paper's vocabularies and tokenizer, a small model.
timed coordinator "$bin" coordinator -v $EP --job $job --data "$data" --tokenizer 13a \
	--vocab 160000 --tgt-vocab 80000 --layers 1 --hidden 64 --embed 64 --batch 32 --steps "$steps" \
	--workers "$workers" --ps-shards 2 --log-every 5 --eval-every 0 --held-out 200 --checkpoint-every 0 \
	--http "127.0.0.1:$((port + 9))" --out "$out/run"
coord=$!
# Scrape each role's passes while it runs (the counters go with it).
while kill -0 "$coord" 2>/dev/null; do
	for i in $(seq 0 $((workers - 1))) c; do
		if [ "$i" = c ]; then
			p=$((port + 9))
			name=coordinator
		else
			p=$((port + 10 + i))
			name=worker-$i
		fi
		m=$(curl -s -m 2 "http://127.0.0.1:$p/metrics" 2>/dev/null | grep '^downpour_corpus_') || true
		[ -n "$m" ] && echo "$m" >"$out/$name.passes"
	done
	sleep 5
done
wait "$coord" || true
sleep 5
stop_servers
wait || true
{
printf '%-12s %10s %8s %8s %8s %8s %10s\n' role peak_rss_MB cpu_s count index held read_GB
for f in "$out"/*.time; do
	name=$(basename "$f" .time)
	rss=$(awk -F': ' '/Maximum resident/ {printf "%.0f", $2/1024}' "$f")
	cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.1f", u+s}' "$f")
	c=- x=- h=- b=-
	if [ -f "$out/$name.passes" ]; then
		c=$(awk '/kind="count"/ {print $2}' "$out/$name.passes")
		x=$(awk '/kind="index"/ {print $2}' "$out/$name.passes")
		h=$(awk '/kind="held"/ {print $2}' "$out/$name.passes")
		b=$(awk '/^downpour_corpus_read_bytes_total/ {printf "%.1f", $2/1e9}' "$out/$name.passes")
	fi
	printf '%-12s %10s %8s %8s %8s %8s %10s\n' "$name" "$rss" "$cpu" "$c" "$x" "$h" "$b"
done
} | tee "$out/roles.txt"
