package auth

// TLS for the client connections to NATS and etcd: a cluster's own
// certificate authority signs one server certificate that every NATS and
// etcd server presents; clients trust that authority only (not the system's
// roots), so a server is who the cluster's operator made it. Who a client
// is stays the business of its credentials (nkeys and etcd users).
//
// A TLS directory holds:
//
//	ca.pem          the authority's certificate (give it to every role: --tls-ca)
//	ca-key.pem      its private key (0600; needed only to issue certificates)
//	server.pem      the servers' certificate, for the hosts it was made for
//	server-key.pem  its private key (0600)

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The files of a TLS directory.
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	ServerFile    = "server.pem"
	ServerKeyFile = "server-key.pem"
)

// maxPEMBytes bounds a certificate or key file.
const maxPEMBytes = 64 << 10

// MakeCerts writes a TLS directory for servers reachable at hosts (DNS
// names or IP addresses; localhost and 127.0.0.1 are always included),
// valid for the given time. An authority already in dir is kept, so that
// roles holding its ca.pem still trust the new server certificate.
func MakeCerts(dir string, hosts []string, valid time.Duration, now time.Time) error {
	if valid <= 0 {
		return fmt.Errorf("certificates must be valid for some time (got %v)", valid)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, caKey, err := readCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		ca, caKey, err = makeCA(dir, valid, now)
	}
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"downpour"}, CommonName: "downpour servers"},
		NotBefore:    now.Add(-time.Hour), // clocks of a cluster differ a little
		NotAfter:     now.Add(valid),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Client too: etcd's gateway dials its own server with this pair.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range append([]string{"localhost", "127.0.0.1"}, hosts...) {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(dir, ServerFile, ServerKeyFile, der, key)
}

func makeCA(dir string, valid time.Duration, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"downpour"}, CommonName: "downpour cluster authority"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(valid),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(dir, CAFile, CAKeyFile, der, key); err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

func writePair(dir, certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func readCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := readPEM(filepath.Join(dir, CAFile), false)
	if err != nil {
		return nil, nil, err
	}
	kb, err := readPEM(filepath.Join(dir, CAKeyFile), true)
	if err != nil {
		return nil, nil, err
	}
	pair, err := tls.X509KeyPair(cb, kb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: the authority's key is not an ECDSA key", filepath.Join(dir, CAKeyFile))
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("%s is not a certificate authority", filepath.Join(dir, CAFile))
	}
	return ca, key, nil
}

// readPEM reads a PEM file of bounded size; a private one (a key) must not
// be readable by others, as credentials files.
func readPEM(path string, private bool) ([]byte, error) {
	b, err := readFile(path, maxPEMBytes, private)
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a certificate or key", path, maxPEMBytes)
	}
	if !bytes.Contains(b, []byte("-----BEGIN ")) {
		return nil, fmt.Errorf("%s: not a PEM file", path)
	}
	return b, nil
}

// ServerTLS is the TLS configuration of a server presenting dir's server
// certificate (TLS 1.2 at least).
func ServerTLS(dir string) (*tls.Config, error) {
	cb, err := readPEM(filepath.Join(dir, ServerFile), false)
	if err != nil {
		return nil, fmt.Errorf("TLS: %w (make the directory with 'downpour certs')", err)
	}
	kb, err := readPEM(filepath.Join(dir, ServerKeyFile), true)
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	tc, err := parsePair(cb, kb)
	if err != nil {
		return nil, fmt.Errorf("TLS %s: %w", dir, err)
	}
	return tc, nil
}

// ClientTLS is the TLS configuration of a client that trusts the authority
// in caFile and nothing else.
func ClientTLS(caFile string) (*tls.Config, error) {
	b, err := readPEM(caFile, false)
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	tc, err := parseCA(b)
	if err != nil {
		return nil, fmt.Errorf("TLS: %s %w", caFile, err)
	}
	return tc, nil
}

// parseCA is the client configuration trusting the certificates of a PEM
// file's bytes, which must hold at least one.
func parseCA(b []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("holds no certificate")
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// parsePair is the server configuration of a certificate and key PEM pair.
func parsePair(cert, key []byte) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}
