package node

import (
	"context"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/issuance/issuancetest"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

// TestReplicaConformance runs the issuance state contract
// (issuancetest.RunStateConformance) against the replica a node serves
// from: a real Raft node with the bbolt FSM, written through Raft commands.
// The issuance unit tests' fake passes the same suite.
func TestReplicaConformance(t *testing.T) {
	issuancetest.RunStateConformance(t, func(t *testing.T) issuancetest.Backend {
		c := rafttest.NewCluster(t, 1)
		return &replicaBackend{replica: newReplica(c.Node(0), time.Now)}
	})
}

// replicaBackend sets a replica up through the commands the admin API
// proposes.
type replicaBackend struct{ *replica }

func (b *replicaBackend) mustPropose(t testing.TB, cmd *raftpb.Command) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.propose(ctx, cmd); err != nil {
		t.Fatalf("%T: %v", cmd.GetOp(), err)
	}
}

func (b *replicaBackend) CreateTenant(t testing.TB, tn issuance.Tenant) {
	b.mustPropose(t, &raftpb.Command{Op: &raftpb.Command_CreateTenant{CreateTenant: &raftpb.CreateTenant{
		Tenant: &raftpb.Tenant{Id: tn.ID, DisplayName: tn.DisplayName, Disabled: tn.Disabled, SigningAlg: tn.SigningAlg},
	}}})
}

func (b *replicaBackend) CreateClient(t testing.TB, c issuance.Client) {
	pc := &raftpb.Client{
		Tenant: c.Tenant, Id: c.ID, Name: c.Name,
		GrantTypes: c.GrantTypes, Scopes: c.Scopes, Audiences: c.Audiences,
		AccessTokenTtlSeconds: int64(c.AccessTokenTTL / time.Second),
		TokenFormat:           string(c.TokenFormat),
		Disabled:              c.Disabled, Public: c.Public, RedirectUris: c.RedirectURIs,
	}
	for _, s := range c.Secrets {
		var exp int64
		if !s.ExpiresAt.IsZero() {
			exp = s.ExpiresAt.UnixNano()
		}
		pc.Secrets = append(pc.Secrets, &raftpb.SecretHash{Hash: s.Hash, ExpiresUnixNano: exp})
	}
	b.mustPropose(t, &raftpb.Command{Op: &raftpb.Command_CreateClient{CreateClient: &raftpb.CreateClient{Client: pc}}})
}

func (b *replicaBackend) AddKey(t testing.TB, k issuance.Key, retention time.Duration) {
	b.mustPropose(t, &raftpb.Command{Op: &raftpb.Command_AddKeys{AddKeys: &raftpb.AddKeys{
		Tenant: k.Tenant, Keys: []*raftpb.Key{keyToPB(k, time.Now(), retention)},
	}}})
}
