package paramserver

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/cockroachdb/datadriven"

	"github.com/downpour-ml/downpour/internal/wire"
)

// TestScripts drives the shard state machine with the scripts in testdata/
// (run with -rewrite to regenerate the expected output). Commands:
//
//	init mode=sync|ssp|async ranks=N blocks=N [staleness=N] [ttl=N] [policy=refuse|skip] [elastic]
//	    a shard of N blocks of one float each, all 0, updated by SGD with lr 1
//	push rank=R step=S [epoch=E] [blocks=0,1] [value=V]   gradient V (or nan) for each block
//	idle rank=R [epoch=E]                                   a push with no blocks
//	pull rank=R clock=C [blocks=...]                        held pulls get tokens #1, #2, ...
//	tick [n=N]
//	snapshot step=S
//	state
//
// After each command, the pulls the shard answered and the snapshots it
// took are listed.
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var sh *Shard
		var nblocks int
		var token uint64
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			var out strings.Builder
			args := map[string]string{}
			for _, a := range d.CmdArgs {
				args[a.Key] = strings.Join(a.Vals, ",")
			}
			num := func(k string, def int64) int64 {
				v, ok := args[k]
				if !ok {
					return def
				}
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					d.Fatalf(t, "%s=%s: %v", k, v, err)
				}
				return n
			}
			ids := func() []uint32 {
				var ids []uint32
				if v, ok := args["blocks"]; ok {
					for _, f := range strings.Split(v, ",") {
						n, _ := strconv.Atoi(f)
						ids = append(ids, uint32(n))
					}
					return ids
				}
				for i := 0; i < nblocks; i++ {
					ids = append(ids, uint32(i))
				}
				return ids
			}
			switch d.Cmd {
			case "init":
				nblocks = int(num("blocks", 1))
				var blocks []job.Block
				cfg := job.ShardConfig{Mode: args["mode"], Ranks: int(num("ranks", 1)), Staleness: num("staleness", 0),
					PullTTL: num("ttl", 0), NonFinite: args["policy"], Optimizer: job.DefaultOptimizer("sgd", 1)}
				// seats=S: a replica of S seats; block i is tensor i, on
				// seat i mod S.
				cfg.Seats = int(num("seats", 0))
				for i := 0; i < nblocks; i++ {
					blocks = append(blocks, job.Block{ID: uint32(i), Tensor: i, Offset: i, Len: 1})
					if cfg.Seats > 1 {
						cfg.TensorSeat = append(cfg.TensorSeat, i%cfg.Seats)
					}
				}
				_, cfg.Elastic = args["elastic"]
				if err := cfg.Validate(); err != nil {
					return "error: " + err.Error()
				}
				sh, token = NewShard(cfg, blocks, func(job.Block, []float32) {}), 0
				return "ok"
			case "push":
				v := float32(nan())
				if args["value"] != "nan" {
					v = float32(num("value", 1))
				}
				p := &wire.PushRequest{V: wire.Version, Job: "j", Rank: uint32(num("rank", 0)), Epoch: uint64(num("epoch", 1)), Step: num("step", 0)}
				for _, id := range ids() {
					p.Blocks = append(p.Blocks, wire.Block{ID: id, Data: wire.AppendFloats(nil, []float32{v})})
				}
				if err := sh.Push(p); err != nil {
					fmt.Fprintf(&out, "refused: %v\n", wire.ErrKind(err))
				} else {
					out.WriteString("ok\n")
				}
			case "idle":
				if err := sh.Push(&wire.PushRequest{V: wire.Version, Job: "j", Rank: uint32(num("rank", 0)), Epoch: uint64(num("epoch", 1))}); err != nil {
					fmt.Fprintf(&out, "refused: %v\n", wire.ErrKind(err))
				} else {
					out.WriteString("ok\n")
				}
			case "pull":
				token++
				now, err := sh.Pull(&wire.PullRequest{V: wire.Version, Job: "j", Rank: uint32(num("rank", 0)), MinClock: num("clock", 0), IDs: ids()}, token)
				switch {
				case err != nil:
					fmt.Fprintf(&out, "refused: %v\n", wire.ErrKind(err))
				case now:
					out.WriteString("now\n")
				default:
					fmt.Fprintf(&out, "held as #%d\n", token)
				}
			case "tick":
				for range num("n", 1) {
					sh.Tick()
				}
			case "snapshot":
				if err := sh.RequestSnapshot(num("step", 0)); err != nil {
					fmt.Fprintf(&out, "error: %v\n", err)
				} else {
					out.WriteString("requested\n")
				}
			case "state":
				st := sh.Stats()
				fmt.Fprintf(&out, "clock %d, rank clocks %v, held %d\n", sh.Clock(), sh.rankClock, sh.Waiting())
				if sh.cfg.Elastic {
					fmt.Fprintf(&out, "active %v\n", sh.active)
				}
				for _, b := range sh.blocks {
					fmt.Fprintf(&out, "block %d: clock %d, w %g\n", b.ID, b.clock, b.w[0])
				}
				fmt.Fprintf(&out, "accepted %d, applied %d, duplicates %d, skipped %d\n", st.Accepted, st.Applied, st.Duplicates, st.Skipped)
			default:
				d.Fatalf(t, "unknown command %s", d.Cmd)
			}
			for _, a := range sh.Ready() {
				fmt.Fprintf(&out, "answer #%d: %v\n", a.Token, a.Kind)
			}
			for _, s := range sh.Snapshots() {
				var ws []string
				for _, b := range s.Blocks {
					ws = append(ws, fmt.Sprintf("%d@%d=%g", b.ID, b.Clock, b.W[0]))
				}
				fmt.Fprintf(&out, "snapshot at step %d: %s\n", s.Step, strings.Join(ws, " "))
			}
			return out.String()
		})
	})
}
