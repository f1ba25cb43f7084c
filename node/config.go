package node

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"time"
)

// Config is the configuration of one node. Flags, environment variables and
// files are read in cmd/tally only; this package takes the struct.
type Config struct {
	// Dev generates what a local single node needs (key-encryption key,
	// admin credential) in DataDir and keeps everything on loopback.
	Dev bool
	// NodeID names this node in the Raft cluster; defaults to "node1".
	NodeID string
	// Region is this node's region label.
	Region string
	// DataDir holds the Raft log, the state database, snapshots, NATS files
	// and, in dev mode, generated secrets.
	DataDir string
	// Listen is the host:port of the HTTP server that serves the OAuth
	// endpoints and the Connect services (HTTP/1.1 and h2c).
	Listen string
	// Issuer is the base URL tenants' issuers are derived from
	// ({Issuer}/t/{tenant}); empty derives http://{Listen}.
	Issuer string
	// RaftBind is the host:port of the Raft transport.
	RaftBind string
	// NATSListen is the host:port of the embedded NATS server; "" disables
	// it.
	NATSListen string

	// KEKFile names a file with the 32-byte key-encryption key (raw, or
	// base64 text). KEK, if set, takes precedence.
	KEKFile string
	KEK     []byte
	// AdminTokenFile names a file with the admin credential. AdminToken, if
	// set, takes precedence.
	AdminTokenFile string
	AdminToken     string

	// OTLPEndpoint, if set, exports traces over OTLP/HTTP to this
	// host:port (or URL).
	OTLPEndpoint string

	// JWKSMaxAge is the Cache-Control max-age of JWKS responses.
	JWKSMaxAge time.Duration
	// KeyPublishDelay is how long a rotated key is published before it is
	// used, so caches learn it first; defaults to JWKSMaxAge.
	KeyPublishDelay time.Duration
	// KeyRetention is how long a retired key stays published; it must cover
	// the longest access-token lifetime.
	KeyRetention time.Duration
	// SweepInterval is how often the leader removes expired revocations and
	// keys.
	SweepInterval time.Duration
	// WriteTimeout bounds a Raft write made on behalf of a request.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds graceful shutdown of the HTTP server.
	ShutdownTimeout time.Duration
	// MaxBodyBytes bounds OAuth request bodies.
	MaxBodyBytes int64
	// DefaultSigningAlg is the signing algorithm of tenants created without
	// one.
	DefaultSigningAlg string
}

// MaxAccessTokenTTL is the longest access-token lifetime a client may have.
const MaxAccessTokenTTL = time.Hour

// DefaultConfig returns a configuration for a single node on loopback.
func DefaultConfig() Config {
	return Config{
		NodeID:            "node1",
		Region:            "local",
		DataDir:           "./data",
		Listen:            "127.0.0.1:8080",
		RaftBind:          "127.0.0.1:7946",
		NATSListen:        "127.0.0.1:4222",
		JWKSMaxAge:        5 * time.Minute,
		KeyRetention:      MaxAccessTokenTTL + 10*time.Minute,
		SweepInterval:     time.Minute,
		WriteTimeout:      5 * time.Second,
		ShutdownTimeout:   10 * time.Second,
		MaxBodyBytes:      16 << 10,
		DefaultSigningAlg: "ES256",
	}
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	if !nodeIDPattern.MatchString(c.NodeID) {
		return fmt.Errorf("node: node id %q: want 1-63 letters, digits, '.', '_' or '-'", c.NodeID)
	}
	if c.DataDir == "" {
		return errors.New("node: data dir is required")
	}
	for name, addr := range map[string]string{"listen": c.Listen, "raft bind": c.RaftBind} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("node: %s address %q: %w", name, addr, err)
		}
	}
	if c.NATSListen != "" {
		if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
			return fmt.Errorf("node: nats listen address %q: %w", c.NATSListen, err)
		}
	}
	if c.Issuer != "" {
		u, err := url.Parse(c.Issuer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("node: issuer %q: want an http(s) URL without query or fragment", c.Issuer)
		}
		if u.Scheme == "http" && !c.Dev && !isLoopbackHost(u.Hostname()) {
			return fmt.Errorf("node: issuer %q: plain http is only allowed on loopback or with --dev", c.Issuer)
		}
	}
	if !c.Dev && len(c.KEK) == 0 && c.KEKFile == "" {
		return errors.New("node: a key-encryption key is required (--kek-file or TALLY_KEK); --dev generates one")
	}
	if !c.Dev && c.AdminToken == "" && c.AdminTokenFile == "" {
		return errors.New("node: an admin credential is required (--admin-token-file or TALLY_ADMIN_TOKEN); --dev generates one")
	}
	if c.JWKSMaxAge < 0 || c.KeyPublishDelay < 0 {
		return errors.New("node: JWKS max-age and key publish delay must not be negative")
	}
	if c.KeyRetention < MaxAccessTokenTTL {
		return fmt.Errorf("node: key retention %s must cover the longest access-token lifetime (%s)", c.KeyRetention, MaxAccessTokenTTL)
	}
	if c.SweepInterval <= 0 || c.WriteTimeout <= 0 || c.ShutdownTimeout <= 0 {
		return errors.New("node: sweep interval, write timeout and shutdown timeout must be positive")
	}
	if c.MaxBodyBytes < 1024 {
		return errors.New("node: max body bytes must be at least 1024")
	}
	switch c.DefaultSigningAlg {
	case "ES256", "EdDSA", "RS256":
	default:
		return fmt.Errorf("node: signing algorithm %q: want ES256, EdDSA or RS256", c.DefaultSigningAlg)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
