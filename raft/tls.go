package raft

import (
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
	"regexp"
	"strings"
	"time"
)

// NodeNameSuffix is the suffix of the DNS name that every node certificate
// carries: node "n1" has the SAN "n1.node.tally". A peer certificate is
// accepted only if it chains to the cluster CA and carries exactly one such
// name, so a certificate issued by the same CA for something else (a web
// server, a client tool) cannot speak Raft.
const NodeNameSuffix = ".node.tally"

// File names in a CA directory and a node certificate directory.
const (
	CACertFile   = "ca.pem"
	CAKeyFile    = "ca-key.pem"
	NodeCertFile = "node.pem"
	NodeKeyFile  = "node-key.pem"
)

// ErrPeerCertificate is returned (wrapped) when a peer's certificate is not a
// node certificate of the cluster CA.
var ErrPeerCertificate = errors.New("raft: peer certificate is not a cluster node certificate")

var nodeIDChars = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// NodeTLS is a node's identity for node-to-node mutual TLS: its certificate
// and key, and the cluster CA that every peer certificate must chain to. It
// is immutable and safe for concurrent use.
type NodeTLS struct {
	cert tls.Certificate
	ca   *x509.CertPool
	id   string // node id from the certificate's node name
}

// NewNodeTLS builds a NodeTLS from PEM data: the cluster CA certificate, the
// node certificate (leaf first, optionally followed by intermediates) and its
// private key. The node certificate must chain to the CA and carry a node
// name (see NodeNameSuffix).
func NewNodeTLS(caPEM, certPEM, keyPEM []byte) (*NodeTLS, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("raft: tls: no CA certificate in PEM data")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("raft: tls: node certificate: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("raft: tls: node certificate: %w", err)
		}
	}
	t := &NodeTLS{cert: cert, ca: pool}
	id, err := t.verifyLeaf(leaf, intermediates(cert.Certificate[1:]), x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, fmt.Errorf("raft: tls: own certificate: %w", err)
	}
	t.id = id
	return t, nil
}

// LoadNodeTLS reads the CA certificate, node certificate and key from files.
func LoadNodeTLS(caFile, certFile, keyFile string) (*NodeTLS, error) {
	var data [3][]byte
	for i, f := range []string{caFile, certFile, keyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("raft: tls: %w", err)
		}
		data[i] = b
	}
	return NewNodeTLS(data[0], data[1], data[2])
}

// LoadNodeTLSDir reads ca.pem, node.pem and node-key.pem from dir (the layout
// WriteNodeCert creates).
func LoadNodeTLSDir(dir string) (*NodeTLS, error) {
	return LoadNodeTLS(filepath.Join(dir, CACertFile), filepath.Join(dir, NodeCertFile), filepath.Join(dir, NodeKeyFile))
}

// NodeID is the node id named in this node's certificate.
func (t *NodeTLS) NodeID() string { return t.id }

func intermediates(ders [][]byte) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, d := range ders {
		if c, err := x509.ParseCertificate(d); err == nil {
			pool.AddCert(c)
		}
	}
	return pool
}

// verifyLeaf checks that leaf chains to the cluster CA for usage and carries
// exactly one node name; it returns the node id.
func (t *NodeTLS) verifyLeaf(leaf *x509.Certificate, inter *x509.CertPool, usage x509.ExtKeyUsage) (string, error) {
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: t.ca, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrPeerCertificate, err)
	}
	id := ""
	for _, name := range leaf.DNSNames {
		if n, ok := strings.CutSuffix(name, NodeNameSuffix); ok {
			if id != "" || !nodeIDChars.MatchString(n) {
				return "", fmt.Errorf("%w: ambiguous or malformed node name %q", ErrPeerCertificate, name)
			}
			id = n
		}
	}
	if id == "" {
		return "", fmt.Errorf("%w: no DNS name ending in %q", ErrPeerCertificate, NodeNameSuffix)
	}
	return id, nil
}

// verifyPeer is the VerifyConnection hook of both sides: the peer must
// present a certificate that verifyLeaf accepts. On the client side, a
// dialled IP address or host name must also be in the certificate.
func (t *NodeTLS) verifyPeer(usage x509.ExtKeyUsage) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: none presented", ErrPeerCertificate)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := t.verifyLeaf(leaf, intermediates(rawCerts(cs.PeerCertificates[1:])), usage); err != nil {
			return err
		}
		if usage == x509.ExtKeyUsageServerAuth && cs.ServerName != "" {
			if err := leaf.VerifyHostname(cs.ServerName); err != nil {
				return fmt.Errorf("%w: %w", ErrPeerCertificate, err)
			}
		}
		return nil
	}
}

func rawCerts(cs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(cs))
	for i, c := range cs {
		out[i] = c.Raw
	}
	return out
}

// ServerConfig is the TLS configuration of a node's internal listener: TLS
// 1.3, a client certificate is required and must be a node certificate of the
// cluster CA. nextProtos are the ALPN protocols offered.
func (t *NodeTLS) ServerConfig(nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.cert},
		ClientAuth:   tls.RequireAnyClientCert, // verified by VerifyConnection
		NextProtos:   nextProtos,
		// Chain verification happens in VerifyConnection, for both sides
		// alike, so that the node-name rule applies too.
		VerifyConnection: t.verifyPeer(x509.ExtKeyUsageClientAuth),
	}
}

// ClientConfig is the TLS configuration for dialling a peer at host (an IP
// address or a name that must be in the peer's certificate).
func (t *NodeTLS) ClientConfig(host string, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.cert},
		ServerName:   host,
		NextProtos:   nextProtos,
		// Standard verification would accept any certificate of the CA;
		// VerifyConnection does it and also checks the node name.
		InsecureSkipVerify: true,
		VerifyConnection:   t.verifyPeer(x509.ExtKeyUsageServerAuth),
	}
}

// CertOptions are the names a node certificate is issued for.
type CertOptions struct {
	// NodeID is the node's Raft id; the certificate gets the DNS name
	// NodeID + NodeNameSuffix.
	NodeID string
	// IPs and DNSNames are the addresses peers dial this node at.
	IPs      []net.IP
	DNSNames []string
	// Validity defaults to one year (ten years for a CA).
	Validity time.Duration
	// Now is the start of validity; zero means time.Now().
	Now time.Time
}

// NewCA creates a self-signed ECDSA P-256 cluster CA and returns the
// certificate and private key as PEM.
func NewCA(name string, validity time.Duration, now time.Time) (certPEM, keyPEM []byte, err error) {
	if now.IsZero() {
		now = time.Now()
	}
	if validity <= 0 {
		validity = 10 * 365 * 24 * time.Hour
	}
	if name == "" {
		name = "tally cluster CA"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCertKey(der, key)
}

// NewNodeCert issues a node certificate (ECDSA P-256, usable as TLS server
// and client) signed by the CA given as PEM.
func NewNodeCert(caCertPEM, caKeyPEM []byte, o CertOptions) (certPEM, keyPEM []byte, err error) {
	if !nodeIDChars.MatchString(o.NodeID) {
		return nil, nil, fmt.Errorf("raft: tls: node id %q: want 1-63 letters, digits, '.', '_' or '-'", o.NodeID)
	}
	ca, err := tls.X509KeyPair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("raft: tls: CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("raft: tls: CA: %w", err)
	}
	if !caCert.IsCA {
		return nil, nil, errors.New("raft: tls: CA certificate is not a CA")
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.Validity <= 0 {
		o.Validity = 365 * 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: o.NodeID + NodeNameSuffix},
		NotBefore:    o.Now.Add(-time.Minute),
		NotAfter:     o.Now.Add(o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     append([]string{o.NodeID + NodeNameSuffix}, o.DNSNames...),
		IPAddresses:  o.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("raft: tls: sign node certificate: %w", err)
	}
	return encodeCertKey(der, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

func encodeCertKey(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// InitCADir creates a CA in dir (ca.pem, ca-key.pem). It refuses to
// overwrite an existing CA.
func InitCADir(dir string, now time.Time) error {
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		return fmt.Errorf("raft: tls: %s already holds a CA", dir)
	}
	certPEM, keyPEM, err := NewCA("", 0, now)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, CACertFile), certPEM, 0o644)
}

// IssueNodeCertDir issues a node certificate with the CA in caDir and writes
// node.pem, node-key.pem and a copy of ca.pem to outDir, the layout
// LoadNodeTLSDir reads.
func IssueNodeCertDir(caDir, outDir string, o CertOptions) error {
	caCert, err := os.ReadFile(filepath.Join(caDir, CACertFile))
	if err != nil {
		return fmt.Errorf("raft: tls: %w", err)
	}
	caKey, err := os.ReadFile(filepath.Join(caDir, CAKeyFile))
	if err != nil {
		return fmt.Errorf("raft: tls: %w", err)
	}
	certPEM, keyPEM, err := NewNodeCert(caCert, caKey, o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(outDir, NodeKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(outDir, NodeCertFile), certPEM, 0o644); err != nil {
		return err
	}
	return writeFile(filepath.Join(outDir, CACertFile), caCert, 0o644)
}

// writeFile writes data to a temporary file and renames it into place.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// NodeIDOf returns the node id named in a node certificate (see
// NodeNameSuffix), or "" if it names none or several. It does not verify
// the certificate.
func NodeIDOf(cert *x509.Certificate) string {
	id := ""
	for _, name := range cert.DNSNames {
		if n, ok := strings.CutSuffix(name, NodeNameSuffix); ok {
			if id != "" || !nodeIDChars.MatchString(n) {
				return ""
			}
			id = n
		}
	}
	return id
}
