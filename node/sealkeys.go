package node

import (
	"context"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// Session cookies, login forms and authorization codes sealed with the
// tenant's rotating sealing key (issue 11; issuance/seal_rotating.go).
//
// Older releases open these only under the static key derived from the
// KEK, so a node seals with the tenant's key only once every member lists
// feature "zt_v2" — and not once a recorded cluster version lacks it (after
// `tally admin cluster downgrade`): a rolling upgrade or a rollback never
// shows a user a login form or a code another node cannot open. Sealing
// keys stay live for at least a session's lifetime after they retire
// (sealRetention), so a rotation does not sign anyone out.

// featureZTv2 names, in MemberStatus.features, the sealed-value format and
// the certificate-bound refresh tokens of public clients
// (issuance.Config.ZTv2).
const featureZTv2 = "zt_v2"

func init() { features = append(features, featureZTv2) }

// sessionTTL is the lifetime of a session cookie (the issuance default;
// the node does not change it).
var sessionTTL = issuance.DefaultConfig().SessionTTL

// sealRetention is how long a retired sealing key stays live: the longest
// opaque token it sealed (retention) and the longest session cookie.
func sealRetention(retention time.Duration) time.Duration {
	return max(retention, sessionTTL+10*time.Minute)
}

// ztv2 is issuance.Config.ZTv2: the sealed-value format above and the
// certificate-bound refresh tokens of public clients.
func (n *Node) ztv2(gate *featureGate) func(context.Context) bool {
	return func(ctx context.Context) bool {
		st := n.raft.State()
		if st.ClusterVersion() != nil && !st.FeatureEnabled(featureZTv2) {
			return false
		}
		return gate.allow(ctx)
	}
}
