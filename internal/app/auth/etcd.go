package auth

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd: each role of a job is an etcd user of the same name (EtcdUser),
// with an etcd role of that name granting, on the job's keys only (its
// prefix, /downpour/jobs/J/):
//
//   - coordinator: read and write everything;
//   - ps: read everything, write its membership (members/ps/), its
//     serving markers (served/) and its snapshot records (shard-snapshots/);
//   - worker: read everything, write its membership (members/workers/),
//     its done markers (done/) and its task reports (task-done/);
//   - observer: read everything.
//
// So no identity of one job reads or writes another job's keys, and a
// worker or a shard cannot change the job's spec, placement, assignments,
// state, tasks or checkpoints.

// EtcdUser is the etcd user (and role) name of role in job.
func EtcdUser(job string, role Role) string { return job + ":" + string(role) }

// etcdPerm is one permission: a key range and what may be done to it.
type etcdPerm struct {
	prefix string
	typ    clientv3.PermissionType
}

func etcdPerms(name string, role Role) []etcdPerm {
	keys := etcdstore.KeysFor(name)
	root := keys.Root()
	read, write := clientv3.PermissionType(clientv3.PermRead), clientv3.PermissionType(clientv3.PermWrite)
	switch role {
	case Coordinator:
		return []etcdPerm{{root, clientv3.PermissionType(clientv3.PermReadWrite)}}
	case PS:
		return []etcdPerm{{root, read}, {keys.Shards(), write}, {root + "served/", write}, {keys.ShardSnapshots(), write}}
	case Worker:
		return []etcdPerm{{root, read}, {keys.Workers(), write}, {keys.Dones(), write}, {keys.TaskDones(), write}}
	case Observer:
		return []etcdPerm{{root, read}}
	}
	return nil
}

func newPassword() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// SetUpEtcd turns on the authentication of the etcd at endpoints (whose
// root password is kept in the file rootFile, made 0600 on first use) and
// gives creds their users: the first time as an anonymous admin, later as
// root.
func SetUpEtcd(ctx context.Context, endpoints []string, timeout time.Duration, rootFile string, creds []*Creds, tc *tls.Config) error {
	pw, err := os.ReadFile(rootFile)
	if errors.Is(err, os.ErrNotExist) {
		var s string
		if s, err = newPassword(); err == nil {
			pw = []byte(s)
			err = os.WriteFile(rootFile, pw, 0o600)
		}
	}
	if err != nil {
		return fmt.Errorf("etcd root password: %w", err)
	}
	admin, err := etcdstore.ConnectAs(ctx, endpoints, timeout, "root", string(pw), tc)
	if errors.Is(err, rpctypes.ErrAuthNotEnabled) {
		admin, err = etcdstore.ConnectAs(ctx, endpoints, timeout, "", "", tc)
	}
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := ProvisionEtcd(ctx, admin, creds); err != nil {
		return err
	}
	return EnableEtcdAuth(ctx, admin, string(pw))
}

// ProvisionEtcd creates (or updates) the etcd users and roles of creds,
// with their passwords and permissions, through admin, a client of etcd's
// root user (or of an etcd without authentication).
func ProvisionEtcd(ctx context.Context, admin *clientv3.Client, creds []*Creds) error {
	for _, c := range creds {
		name := EtcdUser(c.Job, c.Role)
		if _, err := admin.RoleAdd(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("etcd role %s: %w", name, err)
		}
		for _, p := range etcdPerms(c.Job, c.Role) {
			if _, err := admin.RoleGrantPermission(ctx, name, p.prefix, clientv3.GetPrefixRangeEnd(p.prefix), p.typ); err != nil {
				return fmt.Errorf("etcd role %s: %w", name, err)
			}
		}
		_, err := admin.UserAdd(ctx, name, c.etcdPassword)
		if errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			_, err = admin.UserChangePassword(ctx, name, c.etcdPassword)
		}
		if err != nil {
			return fmt.Errorf("etcd user %s: %w", name, err)
		}
		if _, err := admin.UserGrantRole(ctx, name, name); err != nil {
			return fmt.Errorf("etcd user %s: %w", name, err)
		}
	}
	return nil
}

// EnableEtcdAuth turns on etcd's authentication, with a root user of
// password, unless it is on already.
func EnableEtcdAuth(ctx context.Context, admin *clientv3.Client, rootPassword string) error {
	if st, err := admin.AuthStatus(ctx); err == nil && st.Enabled {
		return nil
	}
	if _, err := admin.UserAdd(ctx, "root", rootPassword); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("etcd root user: %w", err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		return fmt.Errorf("etcd root user: %w", err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enabling etcd authentication: %w", err)
	}
	return nil
}

// EtcdLogin is what a client of c needs to log in to etcd.
func (c *Creds) EtcdLogin() (user, password string) {
	if c == nil || c.etcdPassword == "" {
		return "", ""
	}
	return EtcdUser(c.Job, c.Role), c.etcdPassword
}
