package node

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
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
	// ({Issuer}/t/{tenant}): the one public URL of the cluster, the same on
	// every node (the first leader records it in the replicated state, and
	// a node configured with another one refuses to start or join).
	// Required outside Dev; a Dev node without one derives http://{Listen}
	// and answers only for itself.
	Issuer string
	// RaftBind is the host:port of the cluster port: Raft traffic and the
	// internal cluster Connect service, both over mutual TLS.
	RaftBind string
	// RaftAdvertise is the host:port peers dial; empty means RaftBind
	// (which must then be a specific address, not 0.0.0.0).
	RaftAdvertise string
	// Peers is the initial configuration of a new cluster, the same list
	// on every initial member and including this node: each bootstraps with
	// it if it has no Raft state yet. Empty (and no Join) makes a one-voter
	// cluster of this node.
	Peers []Peer
	// Join is the cluster address (RaftAdvertise) of any member: a node
	// without Raft state asks it to add this node (as a voter, or a
	// non-voter with Nonvoter), retrying until it is in. Exclusive with
	// Peers.
	Join string
	// Nonvoter makes a joining node a non-voter: it replicates the state and
	// serves reads and issuance, but does not vote or count for a quorum.
	Nonvoter bool
	// RaftProfile is the Raft timing profile, "lan" or "wan" (see
	// raft.Config.ApplyProfile).
	RaftProfile string
	// RaftTuning, if set, adjusts the Raft configuration last (tests use it
	// for short timeouts and small snapshot thresholds).
	RaftTuning func(*raft.Config)
	// MaxStale is the staleness bound: a node that has not heard from a
	// Raft leader for longer refuses issuance, introspection, JWKS and
	// discovery with temporarily_unavailable and reports not ready, so that a
	// partitioned node cannot honour a disabled client or a revoked token
	// indefinitely.
	MaxStale time.Duration
	// RefreshTTL is the absolute lifetime of a refresh-token family, and
	// RefreshIdleTimeout ends a family unused for that long.
	RefreshTTL         time.Duration
	RefreshIdleTimeout time.Duration
	// RefreshReuseInterval lets a client whose response was lost present
	// the just-superseded refresh token again within this interval and get
	// the same successor instead of a family revocation; 0 turns it off.
	RefreshReuseInterval time.Duration
	// PasswordParams are the argon2id parameters of the password hashes
	// the admin API makes; nil: issuance.DefaultPasswordParams. Only tests
	// lower them: under the race detector on a loaded machine a default
	// hash takes seconds, and sign-ins queue for GOMAXPROCS/2 slots.
	PasswordParams *issuance.PasswordParams
	// DPoPRequireNonce makes the token endpoint demand DPoP server nonces
	// (RFC 9449 §8); the nonces are valid on every node (issuance/dpop.go).
	DPoPRequireNonce bool
	// LeaderRegion, if set, is the region the leader should be in: a leader
	// elsewhere hands leadership to a healthy, caught-up voter of that
	// region when there is one (checked every second). Set the same value on
	// every node.
	LeaderRegion string
	// TLSDir holds the node's cluster identity: ca.pem, node.pem and
	// node-key.pem (tally admin cluster ca init / node-cert). Empty: a single
	// node generates a private CA and certificate in DataDir/tls; a node with
	// Peers or Join needs it (or TLS).
	TLSDir string
	// TLS, if set, is the node's cluster identity and takes precedence over
	// TLSDir.
	TLS *raft.NodeTLS
	// NATSListen is the host:port of the embedded NATS server; "" disables
	// it. Beyond loopback it requires TLS (the node certificate).
	NATSListen string
	// NATSClusterListen is the host:port of the embedded NATS server's
	// route listener: with NATSRoutes, the embedded servers of the cluster
	// form one NATS cluster and the event stream is replicated (see
	// nats.go). Empty: a standalone server.
	NATSClusterListen string
	// NATSRoutes are the other nodes' NATSClusterListen addresses
	// (host:port).
	NATSRoutes []string
	// Events configures the event log (external NATS, retention); see
	// events.go.
	Events EventsConfig
	// RateLimits bounds the public endpoints per client, address, subnet,
	// username and tenant (issuance/ratelimit.go); budgets are shared
	// between the nodes over NATS (node/ratelimit.go).
	RateLimits issuance.RateLimits
	// AlertRiskWindow is how long after it was raised a security alert
	// counts against the requests it names in the contextual policies'
	// risk, alerts and tenant_alerts (node/risk.go); 0 means 10 minutes,
	// negative turns the signal off.
	AlertRiskWindow time.Duration
	// AlertTravelWindow is the impossible-travel threshold (issue 13,
	// refresh_impossible_travel): two rotations of one refresh family
	// served in different regions less than this apart raise the alert.
	// It travels in the rotation command, so the FSM reads no
	// configuration. 0 means raft.DefaultTravelWindow (10 minutes),
	// negative turns the detection off on this node. A tenant's own
	// window (RateLimits.Tenants[t].AlertTravelWindow, non-zero) overrides
	// it for that tenant.
	AlertTravelWindow time.Duration
	// SIEMFile receives the security and audit events as JSON lines in
	// an OCSF-aligned schema (siem.go); "-" is stdout, "" is off.
	SIEMFile string
	// SIEMSyslog, if set, is the host:port of a syslog server that
	// receives the same events as RFC 5424 messages over TCP with TLS
	// (RFC 5425 octet-counted framing), verified against SIEMSyslogCAFile
	// (PEM; empty: the system roots).
	SIEMSyslog       string
	SIEMSyslogCAFile string
	// SIEMSyslogProtocol is the syslog transport: "tls" (the default,
	// RFC 5425 over TLS: no application acknowledgement) or "relp" (RELP
	// over TLS, node/siem_relp.go: every message acknowledged by the
	// collector, unacknowledged ones sent again after a reconnect).
	SIEMSyslogProtocol string
	// SIEMSyslogCertFile and SIEMSyslogKeyFile, if set, are the PEM client
	// certificate and key presented to the syslog server (mutual TLS).
	SIEMSyslogCertFile string
	SIEMSyslogKeyFile  string

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
	// MetricsListen, if set, is the host:port of a separate HTTP listener
	// for /metrics, which the public listener then does not serve.
	MetricsListen string
	// MetricsTokenFile, if set, names a file with a bearer token that
	// /metrics then requires (Authorization: Bearer <token>; Prometheus:
	// authorization.credentials_file), on whichever listener serves it.
	MetricsTokenFile string
	// AdminListen, if set, is the host:port of a separate listener for the
	// admin and cluster-admin APIs, which the public listener then does not
	// serve (admin_listen.go). With AdminTLSCertFile and AdminTLSKeyFile
	// it speaks TLS; with AdminClientCAFile too, it requires client
	// certificates signed by that CA (mutual TLS).
	AdminListen       string
	AdminTLSCertFile  string
	AdminTLSKeyFile   string
	AdminClientCAFile string

	// JWKSMaxAge is the Cache-Control max-age of JWKS responses.
	JWKSMaxAge time.Duration
	// KeyPublishDelay is how long a rotated key is published before it is
	// used, so caches learn it first; defaults to JWKSMaxAge.
	KeyPublishDelay time.Duration
	// KeyRetention is how long a retired key stays published; it must cover
	// the longest access-token lifetime.
	KeyRetention time.Duration
	// SweepInterval is how often the leader starts removing expired
	// records (revocations, keys, codes, families, events); a pass of
	// bounded sweeps continues raft.SweepPause apart until done.
	SweepInterval time.Duration
	// WriteTimeout bounds a Raft write made on behalf of a request.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds graceful shutdown of the HTTP server.
	ShutdownTimeout time.Duration
	// MaxBodyBytes bounds OAuth request bodies.
	MaxBodyBytes int64
	// ZeroTrust: TLS and client certificates on the OAuth listener,
	// trusted proxies, client assertion fetching (ztauth.go).
	ZeroTrust ZTConfig
	// DefaultSigningAlg is the signing algorithm of tenants created without
	// one.
	DefaultSigningAlg string

	// MaxClockSkew is how far this node's clock may be from the median of
	// the voters' clocks before it refuses writes, reports not ready and,
	// if it leads, hands leadership to a voter whose clock agrees (see
	// clock.go); 0 turns the check off.
	MaxClockSkew time.Duration
	// Now is the node's clock; nil means time.Now. Tests inject a clock
	// that jumps.
	Now func() time.Time
	// MinFreeDisk is the free-space watermark of the data file system in
	// bytes: below it the node refuses writes (503 temporarily_unavailable,
	// Connect Unavailable) and reports not ready, while it keeps issuing
	// and introspecting from its replica; a leader hands leadership to a
	// healthy voter. 0 turns the watermark off (a full disk still refuses
	// writes instead of crashing). See disk.go.
	MinFreeDisk uint64
}

// Peer is one member of a new cluster's initial configuration.
type Peer struct {
	ID       string
	RaftAddr string
	Nonvoter bool
}

// DefaultMaxStale is the default staleness bound (Config.MaxStale), like
// Consul's max_stale: several election timeouts, so a leader election does
// not stop issuance, but short enough that a partitioned node stops soon.
const DefaultMaxStale = 5 * time.Second

// MaxAccessTokenTTL is the longest access-token lifetime a client may have
// (issuance.MaxAccessTokenTTL).
const MaxAccessTokenTTL = issuance.MaxAccessTokenTTL

// DefaultConfig returns a configuration for a single node on loopback.
func DefaultConfig() Config {
	return Config{
		NodeID:             "node1",
		Region:             "local",
		DataDir:            "./data",
		Listen:             "127.0.0.1:8080",
		RaftBind:           "127.0.0.1:7946",
		NATSListen:         "127.0.0.1:4222",
		Events:             DefaultEventsConfig(),
		JWKSMaxAge:         5 * time.Minute,
		KeyRetention:       MaxAccessTokenTTL + 10*time.Minute,
		SweepInterval:      time.Minute,
		RaftProfile:        raft.ProfileLAN,
		MaxStale:           DefaultMaxStale,
		RefreshTTL:         30 * 24 * time.Hour,
		RefreshIdleTimeout: 7 * 24 * time.Hour,
		WriteTimeout:       5 * time.Second,
		ShutdownTimeout:    10 * time.Second,
		MaxBodyBytes:       16 << 10,
		DefaultSigningAlg:  "ES256",
		MaxClockSkew:       DefaultMaxClockSkew,
		MinFreeDisk:        DefaultMinFreeDisk,
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
	// Checked in a fixed order, so that a config with several bad
	// addresses is refused naming the same one every time.
	for _, a := range []struct{ name, addr string }{{"listen", c.Listen}, {"raft bind", c.RaftBind}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("node: %s address %q: %w", a.name, a.addr, err)
		}
	}
	if c.Dev {
		// A dev node generates its own secrets and may speak plain HTTP:
		// it stays on loopback.
		for _, a := range []struct{ name, addr string }{{"listen", c.Listen}, {"raft bind", c.RaftBind}, {"nats listen", c.NATSListen}} {
			if host, _, err := net.SplitHostPort(a.addr); err == nil && !isLoopbackHost(host) {
				return fmt.Errorf("node: --dev keeps everything on loopback: %s address %q is not a loopback address", a.name, a.addr)
			}
		}
	}
	if err := c.Events.Validate(); err != nil {
		return err
	}
	if err := c.validateSIEMSyslog(); err != nil {
		return err
	}
	if c.NATSListen != "" {
		if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
			return fmt.Errorf("node: nats listen address %q: %w", c.NATSListen, err)
		}
	}
	if err := c.validateNATSCluster(); err != nil {
		return err
	}
	if c.Issuer != "" {
		u, err := url.Parse(c.Issuer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("node: issuer %q: want an http(s) URL without query or fragment", c.Issuer)
		}
		if u.Scheme == "http" && !c.Dev && !isLoopbackHost(u.Hostname()) {
			return fmt.Errorf("node: issuer %q: plain http is only allowed on loopback or with --dev", c.Issuer)
		}

		if err := raft.CheckIssuer(strings.TrimSuffix(c.Issuer, "/")); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	} else if !c.Dev {
		return errors.New("node: --issuer is required (TALLY_ISSUER, config key issuer): the one public base URL of the cluster, the same on every node, e.g. https://auth.example.com; only --dev derives it from the listen address")
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
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.SweepInterval <= 0 || c.WriteTimeout <= 0 || c.ShutdownTimeout <= 0 {
		return errors.New("node: sweep interval, write timeout and shutdown timeout must be positive")
	}
	if c.MaxClockSkew < 0 {
		return errors.New("node: max clock skew must not be negative (0 turns the check off)")
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

// validateCluster checks the settings of a multi-node cluster.
func (c Config) validateCluster() error {
	if c.RaftAdvertise != "" {
		if _, _, err := net.SplitHostPort(c.RaftAdvertise); err != nil {
			return fmt.Errorf("node: raft advertise address %q: %w", c.RaftAdvertise, err)
		}
	}
	if len(c.Peers) > 0 && c.Join != "" {
		return errors.New("node: peers (bootstrap) and join are exclusive")
	}
	if c.Join != "" {
		if _, _, err := net.SplitHostPort(c.Join); err != nil {
			return fmt.Errorf("node: join address %q: %w", c.Join, err)
		}
	}
	if len(c.Peers) > 0 {
		seen := map[string]bool{}
		self := false
		for _, p := range c.Peers {
			if !nodeIDPattern.MatchString(p.ID) {
				return fmt.Errorf("node: peer id %q is not a node id", p.ID)
			}
			if seen[p.ID] {
				return fmt.Errorf("node: peer %q listed twice", p.ID)
			}
			seen[p.ID] = true
			if _, _, err := net.SplitHostPort(p.RaftAddr); err != nil {
				return fmt.Errorf("node: peer %q raft address %q: %w", p.ID, p.RaftAddr, err)
			}
			if p.ID == c.NodeID {
				self = true
				if p.Nonvoter {
					return fmt.Errorf("node: peer %q (this node) bootstraps the cluster and must be a voter", p.ID)
				}
			}
		}
		if !self {
			return fmt.Errorf("node: peers do not include this node %q", c.NodeID)
		}
	}
	if c.Nonvoter && c.Join == "" {
		return errors.New("node: a non-voter must join an existing cluster (join)")
	}
	if (len(c.Peers) > 1 || c.Join != "") && c.TLS == nil && c.TLSDir == "" {
		return errors.New("node: a multi-node cluster needs node certificates (tls dir; see tally admin cluster ca init)")
	}
	if c.RaftProfile != raft.ProfileLAN && c.RaftProfile != raft.ProfileWAN {
		return fmt.Errorf("node: raft profile %q: want %q or %q", c.RaftProfile, raft.ProfileLAN, raft.ProfileWAN)
	}
	if c.MaxStale <= 0 {
		return errors.New("node: max stale must be positive")
	}
	if c.RefreshTTL < time.Minute || c.RefreshIdleTimeout < 0 {
		return errors.New("node: refresh-token lifetime must be at least 1m and its idle timeout not negative")
	}
	if c.RefreshReuseInterval < 0 || c.RefreshReuseInterval > time.Minute {
		return errors.New("node: refresh reuse interval must be between 0 (off) and 1m")
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
