package auth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// handshake connects a client with cc to a server with sc over loopback
// TCP, as serverName, and returns the client's error.
func handshake(t *testing.T, sc, cc *tls.Config, serverName string) error {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.(*tls.Conn).Handshake()
		c.Close()
	}()
	cc = cc.Clone()
	cc.ServerName = serverName
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", l.Addr().String(), cc)
	if err == nil {
		c.Close()
	}
	return err
}

// The authority signs a certificate for exactly the hosts asked (and
// loopback); clients trusting the authority accept it for those names only,
// and clients of another authority never. Making certificates again keeps
// the authority. Keys are private files, and private files that others can
// read, or that are not certificates, are refused.
func TestCertsMakeAVerifiableChain(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if err := MakeCerts(dir, []string{"nats-1", "10.1.2.3", ""}, 24*time.Hour, now); err != nil {
		t.Fatal(err)
	}
	for f, mode := range map[string]os.FileMode{CAFile: 0o644, CAKeyFile: 0o600, ServerFile: 0o644, ServerKeyFile: 0o600} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != mode {
			t.Fatalf("%s: %v, mode %v, want %v", f, err, st.Mode().Perm(), mode)
		}
	}
	sc, err := ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := ClientTLS(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nats-1", "10.1.2.3", "localhost", "127.0.0.1"} {
		if err := handshake(t, sc, cc, name); err != nil {
			t.Fatalf("handshake as %s: %v", name, err)
		}
	}
	var host x509.HostnameError
	if err := handshake(t, sc, cc, "etcd-9"); !errors.As(err, &host) {
		t.Fatalf("handshake as a name not in the certificate: %v", err)
	}
	other := t.TempDir()
	if err := MakeCerts(other, []string{"nats-1"}, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	occ, _ := ClientTLS(filepath.Join(other, CAFile))
	var unknown x509.UnknownAuthorityError
	if err := handshake(t, sc, occ, "nats-1"); !errors.As(err, &unknown) {
		t.Fatalf("handshake trusting another authority: %v", err)
	}
	// Again, for more hosts: same authority, new server certificate.
	ca, _ := os.ReadFile(filepath.Join(dir, CAFile))
	cert, _ := os.ReadFile(filepath.Join(dir, ServerFile))
	if err := MakeCerts(dir, []string{"etcd-9"}, time.Hour, now); err != nil {
		t.Fatal(err)
	}
	ca2, _ := os.ReadFile(filepath.Join(dir, CAFile))
	cert2, _ := os.ReadFile(filepath.Join(dir, ServerFile))
	if !bytes.Equal(ca, ca2) || bytes.Equal(cert, cert2) {
		t.Fatal("making certificates again replaced the authority or kept the old server certificate")
	}
	sc2, _ := ServerTLS(dir)
	if err := handshake(t, sc2, cc, "etcd-9"); err != nil {
		t.Fatalf("the old ca.pem does not trust the new certificate: %v", err)
	}
	// An expired certificate is refused.
	old := t.TempDir()
	if err := MakeCerts(old, nil, time.Minute, now.Add(-48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	sco, _ := ServerTLS(old)
	cco, _ := ClientTLS(filepath.Join(old, CAFile))
	var invalid x509.CertificateInvalidError
	if err := handshake(t, sco, cco, "localhost"); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Fatalf("handshake with an expired certificate: %v", err)
	}
	// Bad files.
	os.Chmod(filepath.Join(dir, ServerKeyFile), 0o644)
	if _, err := ServerTLS(dir); !errors.Is(err, ErrOpenFile) {
		t.Fatalf("a key others can read: %v", err)
	}
	os.Chmod(filepath.Join(dir, ServerKeyFile), 0o600)
	if err := MakeCerts(filepath.Join(dir, "x"), nil, 0, now); err == nil {
		t.Fatal("certificates valid for no time were made")
	}
	junk := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(junk, []byte("not a certificate"), 0o644)
	if _, err := ClientTLS(junk); err == nil || !strings.Contains(err.Error(), "not a PEM file") {
		t.Fatalf("a CA file of junk: %v", err)
	}
	os.WriteFile(junk, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	if _, err := ClientTLS(junk); err == nil || !strings.Contains(err.Error(), "holds no certificate") {
		t.Fatalf("a CA file with a broken certificate: %v", err)
	}
	os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"), 0o600)
	if err := MakeCerts(dir, nil, time.Hour, now); err == nil {
		t.Fatal("certificates made with a broken authority key")
	}
}

// Servers started with a certificate speak TLS only: a client trusting the
// authority connects to NATS and etcd; a plain client, or one trusting
// another authority, does not.
func TestServersOverTLS(t *testing.T) {
	dir := t.TempDir()
	if err := MakeCerts(dir, nil, time.Hour, time.Now()); err != nil {
		t.Fatal(err)
	}
	c := testenv.ServersWith(t, embedded.Options{TLSCert: filepath.Join(dir, ServerFile),
		TLSKey: filepath.Join(dir, ServerKeyFile)})
	if !strings.HasPrefix(c.NATSURL, "tls://") || !strings.HasPrefix(c.EtcdEndpoints[0], "https://") {
		t.Fatalf("URLs %s and %s are not TLS ones", c.NATSURL, c.EtcdEndpoints[0])
	}
	cc, err := ClientTLS(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	MakeCerts(other, nil, time.Hour, time.Now())
	occ, _ := ClientTLS(filepath.Join(other, CAFile))

	nc, err := nats.Connect(c.NATSURL, nats.Secure(cc), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("NATS over TLS: %v", err)
	}
	if _, ok := nc.TLSConnectionState(); ok != nil {
		t.Fatalf("NATS connection state: %v", ok)
	}
	sub, _ := nc.SubscribeSync("x")
	nc.Publish("x", []byte("hello"))
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "hello" {
		t.Fatalf("NATS over TLS: %v", err)
	}
	nc.Close()
	plain := "nats://" + strings.TrimPrefix(c.NATSURL, "tls://")
	if nc, err := nats.Connect(plain, nats.Timeout(5*time.Second), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("a plain NATS client connected")
	}
	if nc, err := nats.Connect(c.NATSURL, nats.Secure(occ), nats.Timeout(5*time.Second), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("a NATS client trusting another authority connected")
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cli, err := etcdstore.ConnectAs(ctx, c.EtcdEndpoints, 5*time.Second, "", "", cc)
	if err != nil {
		t.Fatalf("etcd over TLS: %v", err)
	}
	if _, err := cli.Put(ctx, "/downpour/x", "1"); err != nil {
		t.Fatalf("etcd over TLS: %v", err)
	}
	cli.Close()
	httpURL := "http://" + strings.TrimPrefix(c.EtcdEndpoints[0], "https://")
	if cli, err := etcdstore.ConnectAs(ctx, []string{httpURL}, 2*time.Second, "", "", nil); err == nil {
		cli.Close()
		t.Fatal("a plain etcd client connected")
	}
	cli, err = etcdstore.ConnectAs(ctx, c.EtcdEndpoints, 2*time.Second, "", "", occ)
	if err == nil {
		cli.Close()
		t.Fatal("an etcd client trusting another authority connected")
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) || !strings.Contains(err.Error(), "--tls-ca") {
		t.Fatalf("an etcd client trusting another authority: %v, want the handshake's error and a hint", err)
	}
}

// No bytes in a CA file or a certificate and key pair crash their parsers;
// what they accept is usable.
func FuzzParseTLSFiles(f *testing.F) {
	dir := f.TempDir()
	if err := MakeCerts(dir, []string{"x"}, time.Hour, time.Now()); err != nil {
		f.Fatal(err)
	}
	ca, _ := os.ReadFile(filepath.Join(dir, CAFile))
	cert, _ := os.ReadFile(filepath.Join(dir, ServerFile))
	key, _ := os.ReadFile(filepath.Join(dir, ServerKeyFile))
	f.Add(ca, cert, key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), key, cert)
	f.Add([]byte{}, []byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"), []byte("junk"))
	f.Fuzz(func(t *testing.T, ca, cert, key []byte) {
		if tc, err := parseCA(ca); err == nil && (tc.RootCAs == nil || tc.MinVersion < tls.VersionTLS12) {
			t.Fatal("an accepted CA file gave no usable configuration")
		}
		if tc, err := parsePair(cert, key); err == nil && len(tc.Certificates) != 1 {
			t.Fatal("an accepted pair gave no certificate")
		}
	})
}
