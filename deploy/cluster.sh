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
#   deploy/cluster.sh build    only build the binaries, images and secrets
#
# Secrets: the first build makes build/secrets (mode 0700): a TLS authority
# and the servers' certificate (tls/), the job's per-role credentials
# (creds/) and the NATS servers' config (nats.conf). Later builds keep them
# (writing the servers' permissions again, for this version's roles);
# delete the directory to make new ones.
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
	secrets
}

secrets() {
	local s=build/secrets
	if [ -f "$s/nats.conf" ]; then
		# The same identities, this version's permissions.
		build/downpour creds --refresh --dir "$s/creds" >/dev/null
		return
	fi
	echo "== secrets ($s)"
	rm -rf "$s"
	mkdir -m 0700 -p "$s"
	# 127.0.0.2: where the fault suite publishes the servers' ports.
	build/downpour certs --dir "$s/tls" --hosts nats1,nats2,nats3,etcd1,etcd2,etcd3,127.0.0.2 >/dev/null
	build/downpour creds --job demo --dir "$s/creds" >/dev/null
	cat >"$s/nats.conf.tmp" <<-'EOF'
		# NATS servers of the compose cluster: the job's identities, TLS for clients.
		include "creds/nats-auth.conf"
		tls {
		  cert_file: "/secrets/tls/server.pem"
		  key_file: "/secrets/tls/server-key.pem"
		  timeout: 5
		}
	EOF
	mv "$s/nats.conf.tmp" "$s/nats.conf"
}

# start brings the cluster up in order: the servers, etcd's users, the roles.
start() {
	compose up -d etcd1 etcd2 etcd3 nats1 nats2 nats3
	for i in $(seq 1 30); do
		compose run --rm --no-deps etcd-auth && break
		[ "$i" = 30 ] && { echo "etcd-auth failed 30 times" >&2; exit 1; }
		sleep 2
	done
	compose up -d
}

case "${1:-}" in
build) build ;;
up)
	build
	echo "== cluster"
	start
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
