package coordinator

import (
	"slices"

	"github.com/downpour-ml/downpour/internal/job"
)

// Ranks decides who holds which rank. Workers arrive (Up), leave (Down) and
// finish (Done); it answers with assignments to write and, once every rank is
// done, that the job is finished. It does no IO.
//
// Invariants: a rank has at most one holder; a worker holds at most one rank;
// a rank given to a new holder gets a higher epoch than any before it, so the
// shards can fence off the old holder; a done rank is never reassigned; a
// worker pinned to a model replica (job.WorkerMember) holds only a rank of
// that replica, and a free rank goes to the oldest waiting worker that may
// hold it.
type Ranks struct {
	holder  []string // worker holding each rank, "" when free
	epoch   []uint64 // epoch of each rank's current (or last) holder
	done    []bool
	rankOf  map[string]int // worker -> rank
	waiting []string       // workers up but without a rank, in arrival order
	seats   int            // ranks per model replica (job.Spec.Seats)
	member  map[string]job.WorkerMember
}

// Assign is an action: write this assignment for worker.
type Assign struct {
	Worker string
	job.Assignment
}

// NewRanks makes the state of a job with n ranks.
func NewRanks(n int) *Ranks { return NewSeatedRanks(n, 1) }

// NewSeatedRanks makes the state of a job with n ranks, seats to a model
// replica: rank r is seat r mod seats of replica r / seats, and reads data
// shard r / seats.
func NewSeatedRanks(n, seats int) *Ranks {
	return &Ranks{holder: make([]string, n), epoch: make([]uint64, n), done: make([]bool, n), rankOf: map[string]int{}, seats: max(1, seats),
		member: map[string]job.WorkerMember{}}
}

// Restore records an assignment read back from the store (a coordinator that takes
// over rebuilds its state this way before it handles events).
func (r *Ranks) Restore(worker string, a job.Assignment) {
	if a.Rank < 0 || a.Rank >= len(r.holder) {
		return
	}
	r.epoch[a.Rank] = max(r.epoch[a.Rank], a.Epoch)
	if old := r.holder[a.Rank]; old != "" {
		if a.Epoch < r.epoch[a.Rank] {
			return
		}
		delete(r.rankOf, old)
	}
	r.holder[a.Rank] = worker
	r.rankOf[worker] = a.Rank
}

// Up records that worker is alive, serving any replica, and returns the
// assignments to make.
func (r *Ranks) Up(worker string) []Assign { return r.UpAs(worker, job.WorkerMember{}) }

// UpAs records that worker is alive, as m says (the replica it is pinned
// to), and returns the assignments to make.
func (r *Ranks) UpAs(worker string, m job.WorkerMember) []Assign {
	if _, ok := r.rankOf[worker]; ok {
		return nil
	}
	for _, w := range r.waiting {
		if w == worker {
			return nil
		}
	}
	r.waiting = append(r.waiting, worker)
	if m.Replica != nil {
		r.member[worker] = m
	}
	return r.fill()
}

// Down records that worker is gone (its lease expired or was revoked).
func (r *Ranks) Down(worker string) []Assign {
	for i, w := range r.waiting {
		if w == worker {
			r.waiting = append(r.waiting[:i], r.waiting[i+1:]...)
			delete(r.member, worker)
			return nil
		}
	}
	rank, ok := r.rankOf[worker]
	if !ok {
		return nil
	}
	delete(r.rankOf, worker)
	delete(r.member, worker)
	r.holder[rank] = ""
	return r.fill()
}

// Done records that rank pushed its last step. It reports whether every rank
// is now done.
func (r *Ranks) Done(rank int) bool {
	if rank >= 0 && rank < len(r.done) {
		r.done[rank] = true
	}
	for _, d := range r.done {
		if !d {
			return false
		}
	}
	return true
}

// Holds reports whether worker holds a rank that is not done: its death
// loses work in progress.
func (r *Ranks) Holds(worker string) bool {
	rank, ok := r.rankOf[worker]
	return ok && !r.done[rank]
}

// Fence is, per rank, the oldest epoch that may push: the holder's, or for a
// free rank the epoch its next holder will get, so that its last holder is
// refused even before the next one arrives.
func (r *Ranks) Fence() []uint64 {
	f := make([]uint64, len(r.epoch))
	for rank, e := range r.epoch {
		f[rank] = e
		if r.holder[rank] == "" {
			f[rank] = e + 1
		}
	}
	return f
}

// Rollback records that the job went back to a checkpoint: every rank runs
// again from there, the done ones included; holders keep their ranks, and a
// done rank without a holder goes to a waiting worker.
func (r *Ranks) Rollback() []Assign {
	clear(r.done)
	return r.fill()
}

// Unassigned is the number of ranks neither held nor done.
func (r *Ranks) Unassigned() int {
	n := 0
	for i, h := range r.holder {
		if h == "" && !r.done[i] {
			n++
		}
	}
	return n
}

// fill gives free ranks, lowest first, each to the oldest waiting worker
// that may hold it.
func (r *Ranks) fill() []Assign {
	var out []Assign
	for rank := range r.holder {
		if len(r.waiting) == 0 {
			break
		}
		if r.holder[rank] != "" || r.done[rank] {
			continue
		}
		i := slices.IndexFunc(r.waiting, func(w string) bool { return r.member[w].Serves(rank, r.seats) })
		if i < 0 {
			continue
		}
		w := r.waiting[i]
		r.waiting = slices.Delete(r.waiting, i, i+1)
		r.epoch[rank]++
		r.holder[rank] = w
		r.rankOf[w] = rank
		out = append(out, Assign{Worker: w, Assignment: job.Assignment{Rank: rank, Epoch: r.epoch[rank], DataShard: rank / r.seats}})
	}
	return out
}
