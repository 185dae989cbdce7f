package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestWaitSeesLaterPut(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx := context.Background()
	go func() {
		time.Sleep(50 * time.Millisecond)
		cli.Put(ctx, "/k/a", "1")
		cli.Put(ctx, "/k/b", "2")
		cli.Delete(ctx, "/k/a")
		cli.Put(ctx, "/k/c", "3")
	}()
	var seen map[string][]byte
	err := WaitPrefix(ctx, cli, "/k/", 10*time.Second, func(kvs map[string][]byte) bool {
		seen = kvs
		return len(kvs) == 2 && kvs["/k/c"] != nil
	})
	if err != nil || string(seen["/k/b"]) != "2" || seen["/k/a"] != nil {
		t.Fatalf("WaitPrefix: %v %v", err, seen)
	}
	v, err := Wait(ctx, cli, "/k/b", time.Second)
	if err != nil || string(v) != "2" {
		t.Fatalf("Wait on an existing key: %v %q", err, v)
	}
}

func TestWaitTimesOut(t *testing.T) {
	cli := testenv.Etcd(t)
	start := time.Now()
	_, err := Wait(context.Background(), cli, "/never", 200*time.Millisecond)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timed out after %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Wait(ctx, cli, "/never", time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestConnectRefusesDeadEndpoint(t *testing.T) {
	start := time.Now()
	_, err := Connect(context.Background(), []string{"http://127.0.0.1:1"}, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

// Keys under a lease vanish when it is closed.
func TestLeaseCloseRemovesKeys(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx := context.Background()
	l, err := Grant(ctx, cli, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/member", "x", clientv3.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	r, err := cli.Get(ctx, "/member")
	if err != nil || len(r.Kvs) != 0 {
		t.Fatalf("member key survives its lease: %v %v", err, r.Kvs)
	}
	select {
	case <-l.Lost():
	default:
		t.Fatal("Lost not closed after Close")
	}
}

// stallProxy forwards TCP connections to an address; while stalled, it
// holds back what flows in the directions it is told to.
type stallProxy struct {
	addr     string
	toServer atomic.Bool // hold requests
	toClient atomic.Bool // hold responses
}

func newStallProxy(t *testing.T, upstream string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &stallProxy{addr: ln.Addr().String()}
	pipe := func(dst, src net.Conn, stalled *atomic.Bool) {
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for stalled.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(u, c, &p.toServer)
			go pipe(c, u, &p.toClient)
		}
	}()
	return p
}

// A lease is lost when etcd says so, not when the client stops hearing
// from etcd: with etcd's answers held back for longer than the TTL while
// etcd keeps the lease (as a new etcd leader does: it extends every lease),
// the client gives up keeping it alive, but the lease lives, and is kept
// alive again once etcd answers. Cut off both ways for longer than the TTL,
// it expires and is lost.
func TestLeaseLostOnlyWhenEtcdSaysSo(t *testing.T) {
	e := testenv.EtcdServer(t)
	p := newStallProxy(t, e.Config().ListenClientUrls[0].Host)
	ctx := context.Background()
	cli, err := Connect(ctx, []string{"http://" + p.addr}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l, err := Grant(ctx, cli, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// etcd's answers are held back for 2.5 s; meanwhile another client
	// keeps the lease alive, as the extension of every lease by a new
	// leader does.
	direct, err := Connect(ctx, []string{e.Config().ListenClientUrls[0].String()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	p.toClient.Store(true)
	for range 10 {
		if _, err := direct.KeepAliveOnce(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond) // the client's keep-alive gives up after 1 s
	}
	p.toClient.Store(false)
	select {
	case <-l.Lost():
		t.Fatal("the lease was given up while etcd kept it alive")
	case <-time.After(3 * time.Second): // three TTLs with nobody else keeping it alive
	}
	r, err := cli.TimeToLive(ctx, l.ID)
	if err != nil || r.TTL < 0 { // -1: gone; 0: under a second left
		t.Fatalf("the lease is not alive: %v %+v", err, r)
	}

	p.toServer.Store(true)
	p.toClient.Store(true)
	time.Sleep(2500 * time.Millisecond) // etcd expires it after 1 s
	p.toServer.Store(false)
	p.toClient.Store(false)
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("an expired lease is still not lost 5 s after etcd is back")
	}
}

// TestWaitKeysWatchesOnlyItsKeys: a waiter on a few keys is told of their
// changes only, not of the keys beside them (a job's prefix holds every
// worker's tasks and reports), and sees each key's revision.
func TestWaitKeysWatchesOnlyItsKeys(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "/j/a", "1"); err != nil {
		t.Fatal(err)
	}
	putB := make(chan int64, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		for i := range 100 {
			cli.Put(ctx, fmt.Sprintf("/j/other/%d", i), "x")
			cli.Put(ctx, "/j/ab", "x") // shares a watched key's prefix
		}
		r, err := cli.Put(ctx, "/j/b", "2")
		if err != nil {
			putB <- -1
			return
		}
		putB <- r.Header.Revision
	}()
	calls := 0
	var seen map[string]*mvccpb.KeyValue
	err := WaitKeys(ctx, cli, []string{"/j/a", "/j/b"}, 10*time.Second, func(kvs map[string]*mvccpb.KeyValue) bool {
		calls++
		seen = kvs
		return kvs["/j/b"] != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rev := <-putB
	if calls != 2 || len(seen) != 2 || string(seen["/j/a"].Value) != "1" || string(seen["/j/b"].Value) != "2" || seen["/j/b"].ModRevision != rev {
		t.Fatalf("done called %d times (want 2: as read, and /j/b put at revision %d), last with %v", calls, rev, seen)
	}
	// Deleted keys leave the map; a wait already done returns at once.
	cli.Delete(ctx, "/j/a")
	calls = 0
	err = WaitKeys(ctx, cli, []string{"/j/a", "/j/b"}, time.Second, func(kvs map[string]*mvccpb.KeyValue) bool {
		calls++
		return kvs["/j/a"] == nil && kvs["/j/b"] != nil
	})
	if err != nil || calls != 1 {
		t.Fatalf("a wait met as read: %v after %d calls", err, calls)
	}
	// It times out as WaitPrefix does.
	err = WaitKeys(ctx, cli, []string{"/j/never"}, 200*time.Millisecond, func(kvs map[string]*mvccpb.KeyValue) bool { return len(kvs) > 0 })
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
}
