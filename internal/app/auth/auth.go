// Package auth gives each role of a job its own NATS identity and the
// subject permissions it needs, and no more.
//
// The invariants, for a job J (its subjects are downpour.J.…; job names
// have no dots, so J is exactly one subject token):
//
//   - Nobody connects without credentials where the server has users.
//   - Only J's workers (and its coordinator and observers, for evaluation
//     and status) may publish pushes and pull requests to J's shards; only
//     J's workers push (downpour.J.*.ps.*.push).
//   - Only J's shards subscribe to J's shard subjects; they publish nothing
//     but replies to the requests they received (NATS's allow_responses)
//     and, where they keep copies of each other's blocks, the entries and
//     acknowledgements of their chains (downpour.J.*.ps.*.repl), which no
//     other role may send or read.
//   - Only J's coordinator asks J's shards for snapshots and reads J's
//     progress; only J's workers report progress.
//   - Every identity receives replies only on its own inbox prefix,
//     _INBOX.J.<role>, so no one reads another job's (or role's) replies.
//
// An identity is an nkey pair: the server holds only public keys (a server
// config may be shared); a role's credentials file holds its seed and must
// stay private (mode 0600).
package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/downpour-ml/downpour/internal/config"
	"github.com/downpour-ml/downpour/internal/wire"
)

// Role is what an identity may do in a job.
type Role string

const (
	Coordinator Role = "coordinator"
	PS          Role = "ps"
	Worker      Role = "worker"
	// Observer reads a job: its status and its shards' clocks and
	// parameters (downpour status, dashboards, evaluation).
	Observer Role = "observer"
)

// Roles are every role, in a fixed order.
var Roles = []Role{Coordinator, PS, Worker, Observer}

func (r Role) valid() bool {
	for _, x := range Roles {
		if r == x {
			return true
		}
	}
	return false
}

// AnyReplica is the Replica of credentials that are not pinned to a model
// replica.
const AnyReplica = -1

// Permissions are the NATS permissions of role in job; for a worker pinned
// to a model replica (replica >= 0), its seat subjects are that replica's
// only.
func Permissions(job string, role Role, replica int) *server.Permissions {
	shard := func(op string) string { return "downpour." + job + ".*.ps.*." + op }
	progress := wire.ProgressSubject(job)
	inbox := InboxPrefix(job, role) + ".>"
	allow := func(s ...string) *server.SubjectPermission { return &server.SubjectPermission{Allow: s} }
	none := &server.SubjectPermission{Deny: []string{">"}}
	switch role {
	case Worker:
		// A seat of a replica laid out over stages talks to the others on
		// the job's seat subjects (wire.SeatSubject): its replica's, when
		// its credentials are pinned to one.
		seats := "downpour." + job + ".seat.>"
		if replica >= 0 {
			seats = "downpour." + job + ".seat." + strconv.Itoa(replica) + ".>"
		}
		return &server.Permissions{Publish: allow(shard("push"), shard("pull"), progress, seats), Subscribe: allow(inbox, seats)}
	case PS:
		// Replies only, to requests received, within the longest a shard
		// holds a pull (2 s) with room to spare.
		return &server.Permissions{Publish: allow(shard("repl")), Subscribe: allow(shard("push"), shard("pull"), shard("snapshot"), shard("repl")),
			Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}}
	case Coordinator:
		return &server.Permissions{Publish: allow(shard("snapshot"), shard("pull")), Subscribe: allow(progress, inbox)}
	case Observer:
		return &server.Permissions{Publish: allow(shard("pull")), Subscribe: allow(inbox)}
	}
	return &server.Permissions{Publish: none, Subscribe: none}
}

// InboxPrefix is where role of job receives its replies.
func InboxPrefix(job string, role Role) string { return "_INBOX." + job + "." + string(role) }

// Creds are one role's credentials in one job.
type Creds struct {
	Job  string
	Role Role
	// Replica is the model replica a worker's credentials are pinned to
	// (its seats' subjects only), or AnyReplica.
	Replica int
	seed    []byte // the nkey seed: the secret
	kp      nkeys.KeyPair
	// etcdPassword is the etcd user's password ("": no etcd login).
	etcdPassword string
}

// New makes fresh credentials for role in job.
func New(job string, role Role) (*Creds, error) {
	if err := wire.ValidJob(job); err != nil {
		return nil, err
	}
	if !role.valid() {
		return nil, fmt.Errorf("role %q: use one of %v", role, Roles)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	pw, err := newPassword()
	if err != nil {
		return nil, err
	}
	return &Creds{Job: job, Role: role, Replica: AnyReplica, seed: seed, kp: kp, etcdPassword: pw}, nil
}

// ForReplica makes a worker's credentials pinned to model replica r: a NATS
// identity of its own, which may reach replica r's seat subjects only, and
// c's etcd login (the job's workers share one etcd user).
func (c *Creds) ForReplica(r int) (*Creds, error) {
	if c.Role != Worker || r < 0 {
		return nil, fmt.Errorf("credentials pinned to replica %d: only a worker's, to a replica from 0", r)
	}
	p, err := New(c.Job, Worker)
	if err != nil {
		return nil, err
	}
	p.Replica, p.etcdPassword = r, c.etcdPassword
	return p, nil
}

// Public is the identity's public key: what a server lists.
func (c *Creds) Public() string {
	pub, _ := c.kp.PublicKey()
	return pub
}

// User is the server's record of c: its public key and permissions.
func (c *Creds) User() User {
	return User{Job: c.Job, Role: c.Role, Replica: c.Replica, Nkey: c.Public()}
}

// String names the credentials without their secret (for logs).
func (c *Creds) String() string {
	if c.Replica >= 0 {
		return fmt.Sprintf("%s/%s of replica %d (%s)", c.Job, c.Role, c.Replica, c.Public())
	}
	return fmt.Sprintf("%s/%s (%s)", c.Job, c.Role, c.Public())
}

// NATSOptions connect as c: signing the server's challenge with the seed,
// and receiving replies on c's inbox prefix.
func (c *Creds) NATSOptions() []nats.Option {
	return []nats.Option{
		nats.Nkey(c.Public(), func(nonce []byte) ([]byte, error) { return c.kp.Sign(nonce) }),
		nats.CustomInboxPrefix(InboxPrefix(c.Job, c.Role)),
	}
}

// maxCredsBytes bounds a credentials file.
const maxCredsBytes = 4 << 10

// Write writes c to path, readable by its owner only (0600), replacing any
// file there atomically.
func (c *Creds) Write(path string) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# downpour credentials: job %s, role %s. Secret: keep this file mode 0600.\njob: %s\nrole: %s\nnats-seed: %s\n",
		c.Job, c.Role, c.Job, c.Role, c.seed)
	if c.Replica >= 0 {
		fmt.Fprintf(&b, "replica: %d\n", c.Replica)
	}
	if c.etcdPassword != "" {
		fmt.Fprintf(&b, "etcd-user: %s\netcd-password: %s\n", EtcdUser(c.Job, c.Role), c.etcdPassword)
	}
	return writeFile(path, b.Bytes(), 0o600)
}

// writeFile writes data to path with mode perm, replacing any file there
// atomically (temp file, fsync, rename): a reader sees the old file or the
// whole new one, and a secret is never readable by others on the way.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".downpour-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// readFile reads at most limit+1 bytes of path (the caller refuses a file
// longer than limit). A private file (a secret) whose mode lets anyone but
// its owner read it is refused with ErrOpenFile, as ssh refuses such keys.
func readFile(path string, limit int64, private bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if private {
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if st.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s: %w (mode %04o): chmod 600 it", path, ErrOpenFile, st.Mode().Perm())
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}

// ErrOpenFile is the error of a secret file that others may read.
var ErrOpenFile = errors.New("credentials file readable by others")

// Read reads a credentials file. It refuses one whose mode lets anyone but
// its owner read it, as ssh refuses such keys.
func Read(path string) (*Creds, error) {
	data, err := readFile(path, maxCredsBytes, true)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", path, err)
	}
	return c, nil
}

// Parse reads credentials from a file's bytes.
func Parse(data []byte) (*Creds, error) {
	if len(data) > maxCredsBytes {
		return nil, fmt.Errorf("%d bytes: a credentials file holds at most %d", len(data), maxCredsBytes)
	}
	entries, err := config.Parse(data)
	if err != nil {
		return nil, err
	}
	c := Creds{Replica: AnyReplica}
	for _, e := range entries {
		switch e.Key {
		case "job":
			c.Job = e.Value
		case "role":
			c.Role = Role(e.Value)
		case "nats-seed":
			c.seed = []byte(e.Value)
		case "etcd-user": // always EtcdUser(job, role): written for the reader's sake
		case "etcd-password":
			c.etcdPassword = e.Value
		case "replica":
			r, err := strconv.Atoi(e.Value)
			if err != nil || r < 0 {
				return nil, fmt.Errorf("line %d: replica %q: a replica number from 0", e.Line, e.Value)
			}
			c.Replica = r
		default:
			return nil, fmt.Errorf("line %d: unknown key %q (job, role, nats-seed, etcd-user, etcd-password, replica)", e.Line, e.Key)
		}
	}
	if c.Replica >= 0 && c.Role != Worker {
		return nil, fmt.Errorf("role %s pinned to replica %d: only a worker's credentials are", c.Role, c.Replica)
	}
	if err := wire.ValidJob(c.Job); err != nil {
		return nil, err
	}
	if !c.Role.valid() {
		return nil, fmt.Errorf("role %q: use one of %v", c.Role, Roles)
	}
	kp, err := nkeys.FromSeed(c.seed)
	if err != nil {
		return nil, errors.New("nats-seed is not an nkey seed") // never echo a secret
	}
	if pub, _ := kp.PublicKey(); !nkeys.IsValidPublicUserKey(pub) {
		return nil, errors.New("nats-seed is not a user's seed")
	}
	c.kp = kp
	return &c, nil
}

// User is what a server knows of an identity.
type User struct {
	Job     string
	Role    Role
	Replica int    // a worker's model replica, or AnyReplica
	Nkey    string // public key
}

// ServerUsers are users as a NATS server's options take them.
func ServerUsers(users []User) []*server.NkeyUser {
	var out []*server.NkeyUser
	for _, u := range users {
		out = append(out, &server.NkeyUser{Nkey: u.Nkey, Permissions: Permissions(u.Job, u.Role, u.Replica)})
	}
	return out
}

// WriteServerConfig writes an authorization block for nats-server's config
// file (include it with `include auth.conf`): every user with its
// permissions. It holds public keys only.
func WriteServerConfig(w io.Writer, users []User) error {
	users = append([]User(nil), users...)
	sort.Slice(users, func(i, j int) bool {
		if users[i].Job != users[j].Job {
			return users[i].Job < users[j].Job
		}
		if users[i].Role != users[j].Role {
			return users[i].Role < users[j].Role
		}
		return users[i].Replica < users[j].Replica
	})
	var b strings.Builder
	b.WriteString("# downpour: NATS users and their permissions (public keys only).\nauthorization {\n  users = [\n")
	list := func(s []string) string {
		q := make([]string, len(s))
		for i, x := range s {
			q[i] = fmt.Sprintf("%q", x)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	perm := func(name string, p *server.SubjectPermission) {
		if p == nil {
			return
		}
		fmt.Fprintf(&b, "      %s: {", name)
		if len(p.Allow) > 0 {
			fmt.Fprintf(&b, " allow: %s", list(p.Allow))
		}
		if len(p.Deny) > 0 {
			fmt.Fprintf(&b, " deny: %s", list(p.Deny))
		}
		b.WriteString(" }\n")
	}
	for _, u := range users {
		p := Permissions(u.Job, u.Role, u.Replica)
		pinned := ""
		if u.Replica >= 0 {
			pinned = fmt.Sprintf(", replica %d", u.Replica)
		}
		fmt.Fprintf(&b, "    # job %s, role %s%s\n    { nkey: %q, permissions: {\n", u.Job, u.Role, pinned, u.Nkey)
		perm("publish", p.Publish)
		perm("subscribe", p.Subscribe)
		if p.Response != nil {
			fmt.Fprintf(&b, "      allow_responses: { max: %d, expires: %q }\n", p.Response.MaxMsgs, p.Response.Expires.String())
		}
		b.WriteString("    } }\n")
	}
	b.WriteString("  ]\n}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
