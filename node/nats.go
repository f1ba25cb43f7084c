package node

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/replication"
)

// HKDF labels of the NATS credentials derived from the key-encryption key.
// Every node of a cluster shares the KEK, so every node derives the same
// credentials; changing a label changes them.
const (
	natsNodeLabel  = "tally nats node v1"
	natsRouteLabel = "tally nats route v1"
)

// natsSecret derives a NATS password from the KEK: 256 bits, base64url.
// It is never logged.
func natsSecret(kek []byte, label string) (string, error) {
	k, err := hkdf.Key(sha256.New, kek, nil, label, 32)
	if err != nil {
		return "", fmt.Errorf("node: deriving a nats credential: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(k), nil
}

// validateNATSCluster checks the embedded NATS cluster settings.
func (c Config) validateNATSCluster() error {
	if c.NATSClusterListen == "" {
		if len(c.NATSRoutes) > 0 {
			return errors.New("node: nats routes need a nats cluster listen address (--nats-cluster-listen)")
		}
		return nil
	}
	if c.NATSListen == "" {
		return errors.New("node: a nats cluster listen address needs the embedded nats server (--nats-listen)")
	}
	if err := checkHostPort(c.NATSClusterListen); err != nil {
		return fmt.Errorf("node: nats cluster listen address %q: %w", c.NATSClusterListen, err)
	}
	for _, r := range c.NATSRoutes {
		if err := checkHostPort(r); err != nil {
			return fmt.Errorf("node: nats route %q: want host:port: %w", r, err)
		}
	}
	return nil
}

// checkHostPort accepts host:port with a numeric port (0 to 65535).
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// natsServers is the number of NATS servers of the embedded cluster: this
// one and every distinct route that is not this server's own listener.
func (c Config) natsServers() int {
	if c.NATSListen == "" || c.NATSClusterListen == "" {
		return 1
	}
	seen := map[string]bool{c.NATSClusterListen: true}
	for _, r := range c.NATSRoutes {
		seen[r] = true
	}
	return len(seen)
}

// streamReplicas is the event stream's replication factor: the configured
// one, or by default min(3, NATS servers) with the embedded cluster and 1
// otherwise.
func (c Config) streamReplicas() int {
	if c.Events.StreamReplicas > 0 {
		return c.Events.StreamReplicas
	}
	if c.Events.NATSURL != "" {
		return 1
	}
	return min(3, c.natsServers())
}

// beyondLoopback reports whether a host:port listens on more than loopback
// (a wildcard or another interface).
func beyondLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err != nil || !isLoopbackHost(host)
}

// natsPeerTLS is the TLS configuration of NATS connections between nodes
// (routes, and a node's own client connection): the node certificate on
// both sides, and the peer's verified as a node certificate of the cluster
// CA (chain and node name) by VerifyConnection on both sides. It is used
// to accept and to dial, hence InsecureSkipVerify: Go's default
// verification is replaced, not skipped.
func natsPeerTLS(t *raft.NodeTLS) *tls.Config {
	c := t.ServerConfig()
	c.InsecureSkipVerify = true
	return c
}

// startNATS starts the embedded NATS server (Config.NATSListen): with
// authentication (node credentials derived from kek, resource servers as
// confidential clients), TLS beyond loopback, and the NATS cluster of
// NATSClusterListen and NATSRoutes.
func (n *Node) startNATS(kek []byte) error {
	cfg := n.cfg
	if cfg.NATSListen == "" {
		return nil
	}
	var err error
	if n.natsNodePass, err = natsSecret(kek, natsNodeLabel); err != nil {
		return err
	}
	nc := replication.DefaultEmbeddedConfig()
	nc.Listen = cfg.NATSListen
	nc.StoreDir = filepath.Join(cfg.DataDir, "nats")
	nc.ServerName = cfg.NodeID
	nc.Logger = n.log
	nc.NodePassword = n.natsNodePass
	nc.ResourceServers = natsResourceServers{n}
	nodeTLS := n.clusterLn.TLS()
	if beyondLoopback(cfg.NATSListen) {
		nc.ClientTLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: nodeTLS.ServerConfig().Certificates}
		n.natsTLS = natsPeerTLS(nodeTLS)
	}
	if cfg.NATSClusterListen != "" {
		nc.ClusterListen = cfg.NATSClusterListen
		nc.Routes = cfg.NATSRoutes
		if nc.RoutePassword, err = natsSecret(kek, natsRouteLabel); err != nil {
			return err
		}
		tlsRoutes := beyondLoopback(cfg.NATSClusterListen)
		for _, r := range cfg.NATSRoutes {
			tlsRoutes = tlsRoutes || beyondLoopback(r)
		}
		if tlsRoutes {
			nc.RouteTLS = natsPeerTLS(nodeTLS)
		}
	}
	if n.nats, err = replication.StartEmbedded(nc); err != nil {
		return err
	}
	// A disabled client or a changed secret closes that resource server's
	// connections at once (secrets that expire: within a second).
	n.raft.FSM().OnApplied(func(uint64, *raftpb.Command, raft.Result) { n.nats.Revalidate() })
	return nil
}

// natsOptions are the options of the node's own NATS connection.
func (n *Node) natsOptions() []nats.Option {
	ec := n.cfg.Events
	opts := []nats.Option{
		nats.Name("tally " + n.cfg.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
	}
	if ec.NATSURL != "" {
		if ec.NATSCredsFile != "" {
			opts = append(opts, nats.UserCredentials(ec.NATSCredsFile))
		}
		if ec.NATSCAFile != "" {
			opts = append(opts, nats.RootCAs(ec.NATSCAFile))
		}
		return opts
	}
	opts = append(opts, nats.UserInfo(replication.NodeUser, n.natsNodePass))
	if n.natsTLS != nil {
		opts = append(opts, nats.Secure(n.natsTLS.Clone()))
	}
	return opts
}

// NATSOptions are the options of this node's own connection to NATS,
// credentials included: for in-process tools and tests that act as the
// node. Never hand them to a resource server.
func (n *Node) NATSOptions() []nats.Option { return n.natsOptions() }

// authenticateClient checks that the HTTP Basic credentials in
// authorization are those of an enabled confidential client of the enabled
// tenant (the token endpoint's client authentication,
// issuance.Server.AuthenticateBasic): the events API's check. nil means
// accepted; credentialsRefused tells a refusal from a check that could not
// be made.
func (n *Node) authenticateClient(ctx context.Context, tenant, authorization string) error {
	if n.iss == nil {
		return errors.New("node: issuance not started")
	}
	_, err := n.iss.AuthenticateBasic(ctx, tenant, authorization)
	return err
}

// authenticateClientSecret is authenticateClient for an id and secret
// given apart (the embedded NATS server's user and password); nil means
// accepted.
func (n *Node) authenticateClientSecret(ctx context.Context, tenant, id, secret string) error {
	if n.iss == nil {
		return errors.New("node: issuance not started")
	}
	_, err := n.iss.AuthenticateClientSecret(ctx, tenant, id, secret)
	return err
}

// natsResourceServers admits resource servers to the embedded NATS server
// with a confidential client's id (user) and secret (password), checked
// against the replica on every connect and again whenever state changes.
type natsResourceServers struct{ n *Node }

func (r natsResourceServers) AuthenticateResourceServer(id, secret string) (string, func() bool, bool) {
	if id == "" || strings.ContainsAny(id, ".*> \t\r\n") {
		return "", nil, false
	}
	st := r.n.raft.State()
	tenant := ""
	for _, t := range st.Tenants() {
		if _, ok := st.Client(t.Id, id); ok {
			tenant = t.Id
			break
		}
	}
	// The NATS server's callbacks carry no context.
	ctx := context.Background()
	if r.n.authenticateClientSecret(ctx, tenant, id, secret) != nil {
		return "", nil, false
	}
	return tenant, func() bool {
		err := r.n.authenticateClientSecret(ctx, tenant, id, secret)
		if !credentialsRefused(err) {
			return true
		}
		// The tenant was deleted (its clients with it): its resource
		// servers already connected stay, to read its last event
		// (tenant-deleted), until its tombstone goes (two hours). They
		// read only that tenant's subjects; no new connection is admitted.
		st := r.n.raft.State()
		if _, ok := st.Tenant(tenant); ok {
			return false
		}
		_, ok := st.DeletedTenant(tenant)
		return ok
	}, true
}

// credentialsRefused reports whether err says the credentials are no
// longer good (invalid_client: a disabled or deleted client, a removed
// secret; an unknown tenant), as opposed to a check that could not be
// made: a replica catching up after a restart or a partition
// (temporarily_unavailable) or a throttle. A connection admitted before is
// closed only on the first kind; closing it on the second would cut every
// resource server off a node each time it catches up, as it applies the
// entries it missed.
func credentialsRefused(err error) bool {
	if err == nil {
		return false
	}
	var e *issuance.Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusNotFound
}
