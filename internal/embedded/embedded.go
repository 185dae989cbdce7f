// Package embedded starts the NATS server and the single-node etcd that
// `downpour train` runs in-process when given no endpoints, and that tests
// use as real servers. Both bind to 127.0.0.1 on free ports and keep their
// data under one directory.
//
//	c, err := embedded.Start(ctx, dir)
//	defer c.Close()
//	nc, _ := nats.Connect(c.NATSURL)
//	cli, _ := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints})
package embedded

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
)

// Cluster is an embedded NATS server and etcd member.
type Cluster struct {
	NATS          *server.Server
	Etcd          *embed.Etcd
	NATSURL       string
	EtcdEndpoints []string
}

// Options places the servers. Zero ports mean free ports chosen at start.
type Options struct {
	Dir          string // data of both servers
	NATSPort     int
	EtcdPort     int // client port
	EtcdPeerPort int
	// NATSUsers, when set, are the only identities NATS accepts, each with
	// its permissions; without them NATS accepts any client (it listens on
	// loopback only).
	NATSUsers []*server.NkeyUser
	// NATSLog, when set, receives the NATS server's log (refused
	// connections and permission violations among it).
	NATSLog server.Logger
	// TLSCert and TLSKey, when set, are the PEM files of the certificate
	// both servers present: NATS then requires TLS of its clients and etcd
	// serves https only.
	TLSCert, TLSKey string
	// EtcdGRPC are more options of etcd's gRPC server (interceptors that
	// watch its answers, say).
	EtcdGRPC []grpc.ServerOption
}

// etcdExtra is what a started etcd has beyond its directory and ports.
type etcdExtra struct {
	tls  *transport.TLSInfo
	grpc []grpc.ServerOption
}

// Start starts both servers with their data under dir, on free ports.
func Start(ctx context.Context, dir string) (*Cluster, error) {
	return StartWith(ctx, Options{Dir: dir})
}

// StartWith starts both servers as opts says. A port that is taken is an
// error that names it.
func StartWith(ctx context.Context, opts Options) (*Cluster, error) {
	for _, p := range []int{opts.NATSPort, opts.EtcdPort, opts.EtcdPeerPort} {
		if err := portFree(p); err != nil {
			return nil, err
		}
	}
	var tc *tls.Config
	if opts.TLSCert != "" {
		pair, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("embedded servers' TLS: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	ns, err := startNATSWith(filepath.Join(opts.Dir, "nats"), opts.NATSPort, 0, opts.NATSUsers, opts.NATSLog, tc)
	if err != nil {
		return nil, err
	}
	extra := etcdExtra{grpc: opts.EtcdGRPC}
	if tc != nil {
		// No TrustedCAFile: with one, etcd requires client certificates;
		// the roles prove who they are by their etcd users.
		extra.tls = &transport.TLSInfo{CertFile: opts.TLSCert, KeyFile: opts.TLSKey}
	}
	e, err := startEtcdPorts(ctx, filepath.Join(opts.Dir, "etcd"), opts.EtcdPort, opts.EtcdPeerPort, extra)
	if err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, err
	}
	return &Cluster{NATS: ns, Etcd: e, NATSURL: ns.ClientURL(), EtcdEndpoints: []string{e.Config().AdvertiseClientUrls[0].String()}}, nil
}

// Close stops both servers and waits until they have stopped.
func (c *Cluster) Close() {
	c.Etcd.Close()
	c.NATS.Shutdown()
	c.NATS.WaitForShutdown()
}

// StartNATS starts a NATS server with JetStream on 127.0.0.1 and a free port.
// maxPayload 0 keeps the server's default (1 MiB).
func StartNATS(storeDir string, maxPayload int32) (*server.Server, error) {
	return startNATS(storeDir, 0, maxPayload)
}

func startNATS(storeDir string, port int, maxPayload int32) (*server.Server, error) {
	return startNATSWith(storeDir, port, maxPayload, nil, nil, nil)
}

func startNATSWith(storeDir string, port int, maxPayload int32, users []*server.NkeyUser, log server.Logger, tc *tls.Config) (*server.Server, error) {
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		Host:               "127.0.0.1",
		Port:               port,
		NoSigs:             true,
		NoLog:              true,
		JetStream:          true,
		StoreDir:           storeDir,
		JetStreamMaxMemory: 64 << 20,
		JetStreamMaxStore:  1 << 30,
		MaxPayload:         maxPayload,
		Nkeys:              users,
	}
	if tc != nil {
		opts.TLSConfig, opts.TLS, opts.TLSTimeout = tc, true, 5
	}
	if log != nil {
		opts.NoLog = false
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	if log != nil {
		s.SetLogger(log, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded NATS: not ready for connections after 10s")
	}
	return s, nil
}

// StartEtcd starts a single-member etcd on 127.0.0.1 with free ports and short
// raft ticks (a single member needs no election margin).
func StartEtcd(ctx context.Context, dataDir string) (*embed.Etcd, error) {
	return startEtcdPorts(ctx, dataDir, 0, 0, etcdExtra{})
}

func startEtcdPorts(ctx context.Context, dataDir string, client, peer int, extra etcdExtra) (*embed.Etcd, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a free port can be taken between probe and bind
		e, err := startEtcd(ctx, dataDir, client, peer, extra)
		if err == nil {
			return e, nil
		}
		lastErr = err
		if client != 0 && peer != 0 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func startEtcd(ctx context.Context, dataDir string, client, peer int, extra etcdExtra) (*embed.Etcd, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	if client != 0 {
		ports[0] = client
	}
	if peer != 0 {
		ports[1] = peer
	}
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	if extra.tls != nil {
		cu.Scheme = "https"
	}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	cfg := embed.NewConfig()
	cfg.Name = "downpour"
	cfg.Dir = dataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.ListenMetricsUrls = nil
	// Every etcd password downpour makes is 24 random bytes (auth.New), for
	// which bcrypt's work factor adds nothing against guessing; the least
	// cost keeps each role's login (and each user's creation) from costing
	// tens of milliseconds of CPU, seconds under the race detector.
	cfg.BcryptCost = uint(bcrypt.MinCost)
	if extra.tls != nil {
		cfg.ClientTLSInfo = *extra.tls
	}
	cfg.GRPCAdditionalServerOptions = extra.grpc
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("embedded etcd: not ready after 30s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}

// portFree reports an error naming port when something listens on it.
func portFree(port int) error {
	if port == 0 {
		return nil
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d is in use on 127.0.0.1: stop what holds it or choose another port", port)
	}
	return l.Close()
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
