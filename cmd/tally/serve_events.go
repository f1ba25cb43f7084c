package main

import (
	"flag"
	"strings"

	"github.com/tallyauth/tally/node"
)

// eventFlags registers the event-log flags of tally serve (see
// node.EventsConfig); like every serve flag, each has a TALLY_ environment
// equivalent (--nats-url is TALLY_NATS_URL).
func eventFlags(fs *flag.FlagSet, c *node.EventsConfig) {
	fs.StringVar(&c.NATSURL, "nats-url", c.NATSURL, "external NATS cluster for the event log (nats:// or tls:// URLs, comma-separated); default: the embedded server")
	fs.StringVar(&c.NATSCredsFile, "nats-creds", c.NATSCredsFile, "NATS credentials file (user JWT and nkey seed) for --nats-url")
	fs.StringVar(&c.NATSCAFile, "nats-ca", c.NATSCAFile, "PEM CA bundle that verifies --nats-url's TLS certificate")
	fs.DurationVar(&c.Retention, "event-retention", c.Retention, "how long events stay in the stream and the outbox: at least the longest access-token lifetime (1h) plus a margin")
	fs.IntVar(&c.StreamReplicas, "event-stream-replicas", c.StreamReplicas, "JetStream replicas of the event stream (1-5; 0: min(3, embedded NATS servers), or 1 with --nats-url)")
	fs.StringVar(&c.ClusterID, "event-cluster-id", c.ClusterID, "prefix of event message ids and SET ids, the same on every node of a cluster")
	fs.Func("event-audience", "aud of published Security Event Tokens, comma-separated (default: the tenant's issuer)", func(s string) error {
		c.Audience = nil
		for _, a := range strings.Split(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.Audience = append(c.Audience, a)
			}
		}
		return nil
	})
}

// natsClusterFlags registers the embedded NATS cluster flags of tally serve:
// --nats-cluster-listen (TALLY_NATS_CLUSTER_LISTEN) and --nats-routes
// (TALLY_NATS_ROUTES, comma-separated).
func natsClusterFlags(fs *flag.FlagSet, c *node.Config) {
	fs.StringVar(&c.NATSClusterListen, "nats-cluster-listen", c.NATSClusterListen, "host:port of the embedded NATS server's route listener; with --nats-routes the nodes' embedded servers form one NATS cluster and replicate the event stream")
	fs.Func("nats-routes", "the other nodes' --nats-cluster-listen addresses, a comma-separated `host:port` list", func(s string) error {
		c.NATSRoutes = nil
		for _, r := range strings.Split(s, ",") {
			if r = strings.TrimSpace(r); r != "" {
				c.NATSRoutes = append(c.NATSRoutes, r)
			}
		}
		return nil
	})
}
