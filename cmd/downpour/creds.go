package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/app/cluster"
	"github.com/downpour-ml/downpour/internal/wire"
)

// cmdCreds makes a job's credentials: one private file per role (its NATS
// identity, mode 0600) and the NATS servers' side of them, public keys with
// permissions, as an authorization block for nats-server's config
// (nats-auth.conf, regenerated from every job's users in the directory).
func cmdCreds(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("creds", flag.ContinueOnError)
	name := fs.String("job", "demo", "the job")
	dir := fs.String("dir", "creds", "directory of the credentials (created 0700)")
	replicas := fs.Int("replicas", 0, "a job laid out over seats: a worker's file per model replica (<job>-worker-r<R>.creds), each reaching only its replica's seat subjects, instead of one for every worker")
	refresh := fs.Bool("refresh", false, "make no identity: write nats-auth.conf again from the users in --dir, with this version's permissions (after an upgrade that changed them)")
	if err := parse(fs, args, stderr, "downpour creds --job demo --dir /etc/downpour/creds"); err != nil {
		return err
	}
	if *refresh {
		return writeServerAuth(*dir, stdout)
	}
	if *replicas < 0 {
		fmt.Fprintln(stderr, "downpour creds: --replicas must not be negative")
		return errUsage
	}
	if err := wire.ValidJob(*name); err != nil {
		fmt.Fprintf(stderr, "downpour creds: %v\n", err)
		return errUsage
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	var pub strings.Builder
	fmt.Fprintf(&pub, "# downpour: public keys of job %s's roles (made by downpour creds)\n", *name)
	for _, r := range auth.Roles {
		c, err := auth.New(*name, r)
		if err != nil {
			return err
		}
		files := []*auth.Creds{c}
		if r == auth.Worker && *replicas > 0 {
			files = nil
			os.Remove(filepath.Join(*dir, fmt.Sprintf("%s-%s.creds", *name, r))) // an unpinned worker's would reach every replica
			for rep := range *replicas {
				p, err := c.ForReplica(rep)
				if err != nil {
					return err
				}
				files = append(files, p)
			}
		}
		for _, c := range files {
			path := filepath.Join(*dir, fmt.Sprintf("%s-%s.creds", *name, r))
			who := string(r)
			if c.Replica >= 0 {
				path = filepath.Join(*dir, fmt.Sprintf("%s-%s-r%d.creds", *name, r, c.Replica))
				who = fmt.Sprintf("%s/%d", r, c.Replica)
			}
			if err := c.Write(path); err != nil {
				return err
			}
			fmt.Fprintf(&pub, "%s %s\n", who, c.Public())
			fmt.Fprintf(stdout, "%s: %s\n", who, path)
		}
	}
	if err := os.WriteFile(filepath.Join(*dir, *name+".users"), []byte(pub.String()), 0o644); err != nil {
		return err
	}
	return writeServerAuth(*dir, stdout)
}

// writeServerAuth writes dir's nats-auth.conf: the servers' side of every
// job's users in dir, with this version's permissions.
func writeServerAuth(dir string, stdout io.Writer) error {
	users, err := readUsers(dir)
	if err != nil {
		return err
	}
	if len(users) == 0 {
		return fmt.Errorf("no users in %s: run 'downpour creds' first", dir)
	}
	f, err := os.Create(filepath.Join(dir, "nats-auth.conf"))
	if err != nil {
		return err
	}
	if err := auth.WriteServerConfig(f, users); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "NATS servers: include %s in their config (or run 'downpour servers --creds-dir %s'); give each role its file with --creds\n",
		filepath.Join(dir, "nats-auth.conf"), dir)
	return nil
}

// readCreds reads every role's credentials file (*.creds) in dir.
func readCreds(dir string) ([]*auth.Creds, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.creds"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []*auth.Creds
	for _, p := range paths {
		c, err := auth.Read(p)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// readUsers reads every job's public keys (<job>.users) in dir.
func readUsers(dir string) ([]auth.User, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.users"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var users []auth.User
	for _, p := range paths {
		job := strings.TrimSuffix(filepath.Base(p), ".users")
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			who, key, ok := strings.Cut(line, " ")
			role, rep, pinned := strings.Cut(who, "/")
			replica := auth.AnyReplica
			if pinned {
				r, err := strconv.Atoi(rep)
				if err != nil || r < 0 || auth.Role(role) != auth.Worker {
					ok = false
				}
				replica = r
			}
			if !ok || !strings.HasPrefix(key, "U") {
				f.Close()
				return nil, fmt.Errorf("%s:%d: want \"<role> <public key>\" or \"worker/<replica> <public key>\"", p, n)
			}
			users = append(users, auth.User{Job: job, Role: auth.Role(role), Replica: replica, Nkey: key})
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return users, nil
}

// cmdCerts makes a cluster's TLS directory: its own certificate authority
// (kept if already there) and the certificate its NATS and etcd servers
// present, for the hosts the roles reach them at.
func cmdCerts(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fs.String("dir", "tls", "directory of the authority and the servers' certificate (created 0700)")
	hosts := fs.String("hosts", "", "comma-separated names and addresses the servers are reached at (localhost and 127.0.0.1 always)")
	days := fs.Int("days", 365, "days the certificates are valid")
	if err := parse(fs, args, stderr, "downpour certs --dir /etc/downpour/tls --hosts nats-1,nats-2,etcd-1,10.0.0.5"); err != nil {
		return err
	}
	if *days < 1 {
		fmt.Fprintf(stderr, "downpour certs: --days must be at least 1 (got %d)\n", *days)
		return errUsage
	}
	if err := auth.MakeCerts(*dir, strings.Split(*hosts, ","), time.Duration(*days)*24*time.Hour, time.Now()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "servers: 'downpour servers --tls-dir %s' (or nats-server's tls block and etcd's --cert-file/--key-file with %s and %s)\n",
		*dir, filepath.Join(*dir, auth.ServerFile), filepath.Join(*dir, auth.ServerKeyFile))
	fmt.Fprintf(stdout, "roles: --tls-ca %s, with tls:// NATS URLs and https:// etcd endpoints\n", filepath.Join(*dir, auth.CAFile))
	return nil
}

// cmdEtcdAuth gives an etcd cluster the users of every job whose
// credentials are in a directory and turns its authentication on (the
// root password is kept there, 0600). Run it again after 'downpour creds'
// adds a job.
func cmdEtcdAuth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("etcd-auth", flag.ContinueOnError)
	dir := fs.String("creds-dir", "creds", "the directory 'downpour creds' wrote")
	etcd := fs.String("etcd", "", "etcd endpoint(s), comma-separated")
	tlsCA := fs.String("tls-ca", "", "connect over TLS, trusting only this authority (ca.pem made by 'downpour certs')")
	timeout := fs.Duration("connect-timeout", 10*time.Second, "how long to wait for etcd to answer")
	if err := parse(fs, args, stderr, "downpour etcd-auth --creds-dir /etc/downpour/creds --etcd https://etcd1:2379 --tls-ca /etc/downpour/tls/ca.pem"); err != nil {
		return err
	}
	if *etcd == "" {
		fmt.Fprintln(stderr, "downpour etcd-auth: give --etcd")
		return errUsage
	}
	creds, err := readCreds(*dir)
	if err != nil {
		return err
	}
	if len(creds) == 0 {
		return fmt.Errorf("%s holds no credentials: make them with 'downpour creds --dir %s'", *dir, *dir)
	}
	tc, err := cluster.Endpoints{TLSCA: *tlsCA}.TLS()
	if err != nil {
		return err
	}
	if err := auth.SetUpEtcd(ctx, strings.Split(*etcd, ","), *timeout, filepath.Join(*dir, "etcd-root.secret"), creds, tc); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "etcd at %s: authentication on, %d role users\n", *etcd, len(creds))
	return nil
}
