package revocation

import (
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyauth/tally/revocation/eventwire"
)

// NATSInboxPrefix is the inbox prefix of a resource server's NATS
// connection: a tally node's embedded NATS server lets a resource server
// receive replies (and ordered-consumer deliveries) only under it, so that
// no client reads another's. ConnectNATS sets it.
func NATSInboxPrefix(tenant, clientID string) string { return eventwire.InboxPrefix(tenant, clientID) }

// NATSLiveSubjects is the core NATS subject filter of a tenant's live
// events: every tally node sends each event's SET there as soon as it is
// applied, besides publishing it to the stream, so a subscriber learns it
// within milliseconds even while the stream elects a new leader (4-9 s
// after the server holding it died). Each node sends it, so keep one per
// SET jti; the stream remains the ordered log to replay from.
func NATSLiveSubjects(tenant string) string { return eventwire.LiveSubjects(tenant) }

// NATSConsumerHeartbeat makes the server send an idle heartbeat every
// second on an ordered consumer: when the server that holds the consumer
// goes away while the client's own connection stays up (a stream leader
// failing over in a NATS cluster), two missed heartbeats recreate the
// consumer elsewhere within seconds instead of nats.go's default 30 s.
var NATSConsumerHeartbeat = jetstream.PullHeartbeat(eventwire.ConsumerHeartbeat)

// NATSConfig is how a resource server connects to tally's NATS servers.
type NATSConfig struct {
	// URLs are the nats:// or tls:// URLs of the tally nodes' NATS servers,
	// comma-separated (TALLY_NATS_URL); the client fails over between
	// them and learns the rest of the cluster from the servers.
	URLs string
	// Tenant, ClientID and ClientSecret: a confidential client of the
	// tenant whose events are followed (the NATS user and password).
	Tenant, ClientID, ClientSecret string
	// CAFile is the cluster CA (PEM) that verifies the servers' TLS
	// certificates; required for tls:// URLs, which tally uses whenever
	// NATS listens beyond loopback.
	CAFile string
	// Name labels the connection in the server's monitoring.
	Name string
}

// NATSOptions are the nats.go options ConnectNATS uses: the client's
// credentials, the inbox prefix the server permits, the CA, pings every
// second (a half-open connection is noticed within about 3 s), and
// reconnecting forever once connected (the first connect fails with the
// server's error, e.g. an authorization violation, after trying every URL),
// through authorization errors too: a tally node that has just restarted
// refuses credentials until its replica has caught up with the leader, and
// nats.go would otherwise close the connection for good after the same
// authorization error twice in a row.
func (c NATSConfig) NATSOptions() []nats.Option {
	opts := []nats.Option{
		nats.UserInfo(c.ClientID, c.ClientSecret),
		nats.CustomInboxPrefix(NATSInboxPrefix(c.Tenant, c.ClientID)),
		nats.MaxReconnects(-1),
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(250 * time.Millisecond),
		// nats.go adds up to 1 s of jitter to each wait over TLS by
		// default; a resource server is one client, not a herd.
		nats.ReconnectJitter(50*time.Millisecond, 50*time.Millisecond),
		nats.Timeout(2 * time.Second),
		// A server cut off by a partition leaves the TCP connection
		// half-open: nothing arrives and nothing fails. Ping every second
		// and give up after two unanswered pings, so the client moves to
		// another server (and the watcher counts the disconnection toward
		// MaxDisconnect) within about 3 s instead of nats.go's 4 minutes.
		nats.PingInterval(time.Second),
		nats.MaxPingsOutstanding(2),
	}
	if c.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	return opts
}

// ConnectNATS connects a resource server to tally's NATS servers, for
// WatcherConfig.NATS. The caller owns (and closes) the connection.
func ConnectNATS(c NATSConfig) (*nats.Conn, error) {
	if c.URLs == "" || c.Tenant == "" || c.ClientID == "" || c.ClientSecret == "" {
		return nil, errors.New("revocation: ConnectNATS needs URLs, Tenant, ClientID and ClientSecret")
	}
	if strings.ContainsAny(c.Tenant+c.ClientID, ".*> \t\r\n") {
		return nil, errors.New("revocation: tenant and client id must be valid subject tokens")
	}
	return nats.Connect(c.URLs, c.NATSOptions()...)
}

// ConnectNATSEach opens one connection per URL of c.URLs, each held to its
// own server (it reconnects to that server only, and ignores the servers
// the cluster advertises), for WatcherConfig.LiveNATS: whichever server
// stops, the connections to the others keep receiving live events. A
// server that is down now is connected to when it comes up (the first
// connect is retried in the background); a connection that cannot start
// at all (a bad URL) is an error. The caller owns (and closes) them.
func ConnectNATSEach(c NATSConfig) ([]*nats.Conn, error) {
	if c.URLs == "" || c.Tenant == "" || c.ClientID == "" || c.ClientSecret == "" {
		return nil, errors.New("revocation: ConnectNATSEach needs URLs, Tenant, ClientID and ClientSecret")
	}
	if strings.ContainsAny(c.Tenant+c.ClientID, ".*> \t\r\n") {
		return nil, errors.New("revocation: tenant and client id must be valid subject tokens")
	}
	var conns []*nats.Conn
	for _, u := range strings.Split(c.URLs, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		nc, err := nats.Connect(u, append(c.NATSOptions(), nats.IgnoreDiscoveredServers(), nats.RetryOnFailedConnect(true))...)
		if err != nil {
			for _, o := range conns {
				o.Close()
			}
			return nil, err
		}
		conns = append(conns, nc)
	}
	return conns, nil
}
