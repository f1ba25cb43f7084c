package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tallyauth/tally/loadtest"
	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/replication"
	"github.com/tallyauth/tally/revocation"
)

// BenchmarkRevokePropagation3Nodes measures revocation propagation on a
// three-node cluster sharing one NATS server: b.N revocations, one at a
// time, through a follower's admin API (forwarded to the leader), observed
// by an SDK that follows the stream over NATS. It reports p50/p99 from the
// acknowledgement to the SDK's set. Run with -benchtime=10000x.
func BenchmarkRevokePropagation3Nodes(b *testing.B) {
	ncfg := replication.DefaultEmbeddedConfig()
	ncfg.Listen, ncfg.StoreDir = "127.0.0.1:0", b.TempDir()
	ncfg.AllowAnonymous = true // an external NATS server without auth
	ext, err := replication.StartEmbedded(ncfg)
	if err != nil {
		b.Fatal(err)
	}
	defer ext.Shutdown()
	c := nodetest.StartCluster(b, 3, nodetest.WithNodeOptions(nodetest.WithConfig(func(cfg *node.Config) {
		cfg.NATSListen = ""
		cfg.Events.NATSURL = ext.ClientURL()
		cfg.Events.Audience = []string{"tally-events"}
	})))
	f := c.Follower()
	id, secret := f.CreateClient(b, &adminv1.CreateClientRequest{Tenant: "default", Name: "rs", Scopes: []string{"read:orders"}})
	var issuers []string
	for _, i := range c.Running() {
		issuers = append(issuers, c.Node(i).Issuer("default"))
	}
	nc, err := nats.Connect(ext.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	w, err := revocation.NewWatcher(revocation.WatcherConfig{
		Issuer: f.Issuer("default"), Tenant: "default", ServerURL: f.BaseURL(), ClientID: id, ClientSecret: secret,
		NATS: nc, SETIssuers: issuers, SETAudience: "tally-events",
	})
	if err != nil {
		b.Fatal(err)
	}
	w.Start()
	defer w.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	rep, err := loadtest.RunRevokePropagation(context.Background(), loadtest.RevokePropagationConfig{
		Admin: f.Admin, Tenant: "default", Watcher: w, Revocations: b.N,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(rep.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(rep.P99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(rep.Max.Microseconds()), "max-µs")
	b.ReportMetric(float64(rep.BeforeAck), "before-ack")
	b.ReportMetric(float64(rep.FromCallP50.Microseconds()), "call-p50-µs")
	b.ReportMetric(float64(rep.FromCallP99.Microseconds()), "call-p99-µs")
}
