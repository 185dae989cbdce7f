#!/usr/bin/env bash
# deploy/cluster.sh: a local downpour cluster in docker-compose, on images
# built here from nothing (no registry is needed).
#
#   deploy/cluster.sh up       build the binaries and images, start the cluster
#                              (3 etcd, 3 NATS with JetStream, 2 coordinators,
#                              2 parameter-server shards, 3 workers) and its job
#   deploy/cluster.sh status   the job's state, through a one-off container
#   deploy/cluster.sh dashboard  the coordinators' dashboard URLs
#   deploy/cluster.sh logs     follow every container's log
#   deploy/cluster.sh down     stop it and delete its volumes
#   deploy/cluster.sh build    only build the binaries and images
#
# JOB_ARGS overrides the job's flags (default: the Seq2Seq copy task, sync,
# 600 steps, checkpoints every 50), e.g.
#   JOB_ARGS="--model gan --steps 2000 --mnist /mnist" deploy/cluster.sh up
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")"
export PATH="/usr/local/go/bin:$PATH"
compose() { docker-compose -p downpour -f docker-compose.yml "$@"; }

build() {
	mkdir -p build/tmp
	echo "== binaries (static)"
	(cd .. && CGO_ENABLED=0 go build -ldflags='-s -w' -o deploy/build/downpour ./cmd/downpour)
	(cd tools && CGO_ENABLED=0 go build -ldflags='-s -w' -o ../build/nats-server github.com/nats-io/nats-server/v2 &&
		CGO_ENABLED=0 go build -ldflags='-s -w' -o ../build/etcd go.etcd.io/etcd/server/v3)
	echo "== images (FROM scratch)"
	for bin in downpour nats-server etcd; do
		docker build -q -t "downpour-local/$bin:dev" --build-arg BIN="$bin" -f images/Dockerfile build >/dev/null
		echo "downpour-local/$bin:dev"
	done
}

case "${1:-}" in
build) build ;;
up)
	build
	echo "== cluster"
	compose up -d
	compose ps
	"$self" dashboard
	;;
status)
	compose run --rm --no-deps status
	;;
dashboard)
	for c in coordinator1 coordinator2; do
		echo "$c: http://$(compose port "$c" 9090)/"
	done
	;;
logs) compose logs -f ;;
down) compose down -v --remove-orphans ;;
*)
	sed -n '2,/^set -e/{/^#/p}' "$self" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
