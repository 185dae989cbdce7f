package embedded_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/embedded"
)

// The servers 'downpour train' runs in-process: a NATS server and a
// single-node etcd, on free ports of 127.0.0.1, their data under one
// directory.
func ExampleStart() {
	dir, err := os.MkdirTemp("", "embedded")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	c, err := embedded.Start(ctx, dir)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	nc, err := nats.Connect(c.NATSURL)
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints})
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		panic(err)
	}
	r, err := cli.Get(ctx, "k")
	if err != nil {
		panic(err)
	}
	fmt.Println(nc.IsConnected(), string(r.Kvs[0].Value))
	// Output: true v
}
