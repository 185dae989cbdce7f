package embedded

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestStartServesBoth(t *testing.T) {
	ctx := context.Background()
	c, err := Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nc, err := nats.Connect(c.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.MaxPayload() != 1<<20 {
		t.Errorf("max payload %d, want the default 1 MiB", nc.MaxPayload())
	}
	sub, _ := nc.Subscribe("x", func(m *nats.Msg) { m.Respond(append([]byte("echo "), m.Data...)) })
	defer sub.Unsubscribe()
	reply, err := nc.Request("x", []byte("hi"), 5*time.Second)
	if err != nil || string(reply.Data) != "echo hi" {
		t.Fatalf("NATS request: %v %v", err, reply)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(ctx, "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("etcd get: %v %v", err, r)
	}
}
