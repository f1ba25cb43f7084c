package replication

import (
	"crypto/subtle"
	"sync"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tallyauth/tally/revocation/eventwire"
)

// Users of the embedded NATS server.
const (
	// NodeUser is the user tally nodes connect as; its password is
	// derived from the cluster's secrets (EmbeddedConfig.NodePassword).
	NodeUser = "tally-node"
	// RouteUser is the user of routes between embedded servers.
	RouteUser = "tally-route"
)

// ResourceServerAuth authenticates resource servers to the embedded NATS
// server: user = client_id, password = client_secret of a confidential
// client. Implementations must be safe for concurrent use.
type ResourceServerAuth interface {
	// AuthenticateResourceServer returns the tenant of the enabled
	// confidential client id whose secret is secret, and a function that
	// reports whether that is still so (called again whenever the embedded
	// server revalidates its connections); ok false refuses the connection.
	AuthenticateResourceServer(clientID, secret string) (tenant string, stillValid func() bool, ok bool)
}

// NodePermissions are a node's: everything except deleting or purging the
// event stream or deleting its messages.
func NodePermissions(stream string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Deny: streamDestroyers(stream)},
	}
}

func streamDestroyers(stream string) []string {
	return []string{
		"$JS.API.STREAM.DELETE." + stream,
		"$JS.API.STREAM.PURGE." + stream,
		"$JS.API.STREAM.MSG.DELETE." + stream,
	}
}

// ResourceServerPermissions are those of a resource server of tenant: it
// may read its tenant's events (core subscriptions on tally.<tenant>.>, or
// an ordered consumer on the stream filtered to exactly those subjects) and
// nothing else. It publishes only to the JetStream API calls an ordered
// consumer makes; replies reach it on its own inbox prefix
// (eventwire.InboxPrefix), so it cannot read another client's replies
// or deliveries.
func ResourceServerPermissions(stream, tenant, clientID string) *server.Permissions {
	const api = "$JS.API."
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			api + "STREAM.INFO." + stream,
			// The filter is part of the subject, and the server refuses a
			// request whose configured filter differs from it.
			api + "CONSUMER.CREATE." + stream + ".*." + eventwire.TenantSubjects(tenant),
			api + "CONSUMER.MSG.NEXT." + stream + ".*",
			api + "CONSUMER.INFO." + stream + ".*",
			api + "CONSUMER.DELETE." + stream + ".*",
			"$JS.FC." + stream + ".>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{
			eventwire.TenantSubjects(tenant),
			eventwire.InboxPrefix(tenant, clientID) + ".>",
		}},
	}
}

// authenticator is the embedded server's CustomClientAuthentication.
type authenticator struct {
	nodePass string
	rs       ResourceServerAuth
	stream   string

	mu    sync.Mutex
	conns map[uint64]func() bool // resource-server connections: still valid?
	wake  chan struct{}
}

// Check admits NodeUser with the node password and resource servers that
// ResourceServers accepts. It never logs credentials.
func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o == nil || o.Username == "" {
		return false
	}
	if o.Username == NodeUser {
		if subtle.ConstantTimeCompare([]byte(o.Password), []byte(a.nodePass)) != 1 {
			return false
		}
		c.RegisterUser(&server.User{Username: NodeUser, Permissions: NodePermissions(a.stream)})
		return true
	}
	if a.rs == nil || o.Password == "" {
		return false
	}
	tenant, still, ok := a.rs.AuthenticateResourceServer(o.Username, o.Password)
	if !ok || still == nil {
		return false
	}
	c.RegisterUser(&server.User{Username: o.Username, Permissions: ResourceServerPermissions(a.stream, tenant, o.Username)})
	a.mu.Lock()
	a.conns[c.GetID()] = still
	a.mu.Unlock()
	return true
}

// revoked forgets connections that are gone (live reports false) and
// returns those that are no longer allowed.
func (a *authenticator) revoked(live func(cid uint64) bool) []uint64 {
	a.mu.Lock()
	check := make(map[uint64]func() bool, len(a.conns))
	for cid, f := range a.conns {
		check[cid] = f
	}
	a.mu.Unlock()
	var out []uint64
	for cid, still := range check {
		switch {
		case !live(cid):
		case !still():
			out = append(out, cid)
		default:
			continue
		}
		a.mu.Lock()
		delete(a.conns, cid)
		a.mu.Unlock()
	}
	return out
}
