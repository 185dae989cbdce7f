package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// checkArgs runs a downpour command line from a deployment file up to its
// flag parsing (adding -h): every flag must exist. A unit, manifest or
// compose file whose flags the binary does not take fails here, not on a
// cluster.
func checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	var e syncBuffer
	if code := run(context.Background(), append(append([]string(nil), args...), "-h"), io.Discard, &e); code != 0 {
		t.Errorf("%s: downpour %s: exit %d\n%s", where, strings.Join(args, " "), code, e.String())
	}
}

// readEnv reads an environment file of KEY=value lines ("#" comments).
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	return env
}

var envVar = regexp.MustCompile(`\$\{(\w+)(?::-([^}]*))?\}`)

// expand replaces ${KEY} and ${KEY:-default} in s with env's values, as
// systemd and docker-compose do.
func expand(s string, env map[string]string) string {
	return envVar.ReplaceAllStringFunc(s, func(m string) string {
		sub := envVar.FindStringSubmatch(m)
		if v := env[sub[1]]; v != "" {
			return v
		}
		return sub[2]
	})
}

// The Kubernetes manifests parse, hold what deploy/README.md says (etcd and
// the shards as StatefulSets, the workers as a Deployment, two
// coordinators), and every downpour container's arguments are flags the
// binary takes.
func TestDeployKubernetesManifests(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "k8s", "downpour.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
			Metadata   struct{ Name string }
			Spec       struct {
				Replicas int
				Template struct {
					Spec struct {
						Containers []struct {
							Name  string
							Image string
							Args  []string
						}
					}
				}
			}
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if doc.APIVersion == "" || doc.Kind == "" || doc.Metadata.Name == "" {
			t.Fatalf("a document without apiVersion, kind or name: %+v", doc)
		}
		kinds[doc.Metadata.Name] = doc.Kind
		for _, c := range doc.Spec.Template.Spec.Containers {
			if strings.Contains(c.Image, "/downpour:") {
				args := make([]string, len(c.Args))
				for i, a := range c.Args {
					args[i] = strings.ReplaceAll(a, "$(POD_NAME)", "pod-0")
				}
				checkArgs(t, "k8s "+doc.Metadata.Name, args)
			}
		}
		if doc.Metadata.Name == "coordinator" && doc.Spec.Replicas != 2 {
			t.Errorf("%d coordinators, want a leader and a standby", doc.Spec.Replicas)
		}
	}
	for name, kind := range map[string]string{"etcd": "StatefulSet", "nats": "StatefulSet", "ps": "StatefulSet",
		"worker": "Deployment", "coordinator": "Deployment", "snapshots": "PersistentVolumeClaim"} {
		if kinds[name] != kind {
			t.Errorf("%s is a %q, want a %s", name, kinds[name], kind)
		}
	}
}

// The systemd units start downpour with flags it takes.
func TestDeploySystemdUnits(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "systemd")
	env := readEnv(t, filepath.Join(dir, "downpour.env"))
	units, _ := filepath.Glob(filepath.Join(dir, "*.service"))
	if len(units) != 3 {
		t.Fatalf("%d units, want coordinator, ps@ and worker@", len(units))
	}
	for _, u := range units {
		f, err := os.Open(u)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			cmd, ok := strings.CutPrefix(sc.Text(), "ExecStart=")
			if !ok {
				continue
			}
			n++
			cmd = expand(cmd, env)
			cmd = strings.NewReplacer("%i", "0", "%H", "host").Replace(cmd)
			fields := strings.Fields(cmd)
			if fields[0] != "/usr/local/bin/downpour" {
				t.Errorf("%s runs %s", u, fields[0])
			}
			checkArgs(t, u, fields[1:])
		}
		f.Close()
		if n != 1 {
			t.Errorf("%s: %d ExecStart lines", u, n)
		}
	}
}

// The docker-compose cluster's downpour services run commands the binary
// takes (with deploy/.env's values), and it has the members deploy/README.md
// promises.
func TestDeployCompose(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy")
	env := readEnv(t, filepath.Join(dir, ".env"))
	b, err := os.ReadFile(filepath.Join(dir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image   string
			Command string
		}
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for name, s := range compose.Services {
		role := strings.TrimRight(name, "0123456789")
		count[role]++
		if !strings.Contains(s.Image, "/downpour:") {
			continue
		}
		cmd := expand(s.Command, env)
		checkArgs(t, "compose "+name, strings.Fields(cmd))
	}
	for role, n := range map[string]int{"etcd": 3, "nats": 3, "coordinator": 2, "ps": 2, "worker": 3} {
		if count[role] != n {
			t.Errorf("%d %s services, want %d", count[role], role, n)
		}
	}
}
