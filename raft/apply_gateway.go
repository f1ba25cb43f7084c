package raft

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Gateway configuration (issue 12): per tenant, the gateway's routes, rate
// limits and CEL policies, one raftpb.GatewayConfig record under the meta
// bucket's "gateway/<tenant>" key and in the read view
// (State.GatewayConfig). Its revision is the policy version: every node
// evaluates the policies of the revision it has applied, and a change
// takes effect on every node at the same Raft index.

// kindGatewayConfig is the change kind of a GatewayConfig record.
const kindGatewayConfig = "gateway_config"

// metaGatewayPrefix prefixes the gateway records in the meta bucket.
const metaGatewayPrefix = "gateway/"

// Bounds of a gateway configuration.
const (
	maxGatewayRoutes     = 1024
	maxGatewayRateLimits = 1024
	maxPolicies          = 64
	maxPolicySource      = 16 << 10
)

// CheckGatewayConfig validates a gateway configuration (not its CEL
// sources: the admin API compiles them before proposing).
func CheckGatewayConfig(c *raftpb.GatewayConfig) error {
	if err := checkTenantID(c.GetTenant()); err != nil {
		return err
	}
	if len(c.GetRoutes()) > maxGatewayRoutes || len(c.GetRateLimits()) > maxGatewayRateLimits || len(c.GetPolicies()) > maxPolicies {
		return invalidf("gateway config: too many routes, rate limits or policies")
	}
	type rk struct{ p, m string }
	seen := map[rk]bool{}
	for _, r := range c.GetRoutes() {
		p := r.GetPathPrefix()
		if !strings.HasPrefix(p, "/") || len(p) > 1024 || strings.ContainsAny(p, "?# \t\r\n") {
			return invalidf("gateway route: path prefix %q: want an absolute path without query", p)
		}
		switch r.GetMethod() {
		case "", http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		default:
			return invalidf("gateway route: method %q", r.GetMethod())
		}
		if seen[rk{p, r.GetMethod()}] {
			return invalidf("gateway route: %s %s twice", r.GetMethod(), p)
		}
		seen[rk{p, r.GetMethod()}] = true
		for _, s := range r.GetScopes() {
			if s == "" || len(s) > 256 || strings.ContainsAny(s, " \"\\") {
				return invalidf("gateway route: scope %q", s)
			}
		}
		if len(r.GetPhantomAudience()) > 2048 {
			return invalidf("gateway route: phantom audience too long")
		}
	}
	clients := map[string]bool{}
	for _, l := range c.GetRateLimits() {
		if l.GetClientId() != "" {
			if err := checkClientID(l.GetClientId()); err != nil {
				return err
			}
		}
		if clients[l.GetClientId()] {
			return invalidf("gateway rate limit: client %q twice", l.GetClientId())
		}
		clients[l.GetClientId()] = true
		if !(l.GetPerSecond() > 0 && l.GetPerSecond() <= 1e9) || l.GetBurst() == 0 {
			return invalidf("gateway rate limit: want per_second > 0 and burst > 0")
		}
	}
	pol := map[string]bool{}
	for _, p := range c.GetPolicies() {
		if p.GetClientId() != "" {
			if err := checkClientID(p.GetClientId()); err != nil {
				return err
			}
		}
		if pol[p.GetClientId()] {
			return invalidf("policy: client %q twice", p.GetClientId())
		}
		pol[p.GetClientId()] = true
		if len(p.GetSource()) == 0 || len(p.GetSource()) > maxPolicySource {
			return invalidf("policy: source must be 1-%d bytes", maxPolicySource)
		}
	}
	return nil
}

// setGatewayConfig stores a tenant's gateway configuration with the next
// revision.
func (a *applier) setGatewayConfig(op *raftpb.SetGatewayConfig, now int64) error {
	c := op.GetConfig()
	if !a.tenantExists(c.GetTenant()) {
		return notFoundTenant(c.GetTenant())
	}
	key := metaGatewayPrefix + c.GetTenant()
	old := &raftpb.GatewayConfig{}
	a.get(a.bucket(bucketMeta), key, old)
	if op.GetExpectedRevision() != old.GetRevision() {
		return fmt.Errorf("%w: gateway config of tenant %q is at revision %d, not %d", ErrConflict, c.GetTenant(), old.GetRevision(), op.GetExpectedRevision())
	}
	m := proto.Clone(c).(*raftpb.GatewayConfig)
	m.Revision = old.GetRevision() + 1
	m.UpdatedUnixNano = now
	v, err := marshalOpts.Marshal(m)
	if err != nil {
		storageFault("marshal gateway config: %v", err)
	}
	a.put(a.bucket(bucketMeta), []byte(key), v)
	a.changes = append(a.changes, change{kind: kindGatewayConfig, tenant: m.Tenant, msg: m})
	return nil
}

// readGatewayConfigs reads every GatewayConfig record.
func readGatewayConfigs(tx *bbolt.Tx) (map[string]*raftpb.GatewayConfig, error) {
	out := map[string]*raftpb.GatewayConfig{}
	b := tx.Bucket([]byte(bucketMeta))
	if b == nil {
		return out, nil
	}
	cur := b.Cursor()
	pfx := []byte(metaGatewayPrefix)
	for k, v := cur.Seek(pfx); k != nil && bytes.HasPrefix(k, pfx); k, v = cur.Next() {
		m := &raftpb.GatewayConfig{}
		if err := proto.Unmarshal(v, m); err != nil {
			return nil, fmt.Errorf("raft: gateway config %q: %w", k, err)
		}
		out[m.Tenant] = m
	}
	return out, nil
}

// GatewayConfig returns the tenant's gateway configuration (nil if none
// was set).
func (s *State) GatewayConfig(tenant string) *raftpb.GatewayConfig {
	if m := s.gateway.Load(); m != nil {
		return (*m)[tenant]
	}
	return nil
}

// dropGatewayConfig forgets a deleted tenant's record (copy on write).
func (s *State) dropGatewayConfig(tenant string) {
	old := s.gateway.Load()
	if old == nil {
		return
	}
	next := map[string]*raftpb.GatewayConfig{}
	for k, v := range *old {
		if k != tenant {
			next[k] = v
		}
	}
	s.gateway.Store(&next)
}

// storeGatewayConfig publishes one record (copy on write).
func (s *State) storeGatewayConfig(c *raftpb.GatewayConfig) {
	old := s.gateway.Load()
	next := map[string]*raftpb.GatewayConfig{}
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	next[c.Tenant] = c
	s.gateway.Store(&next)
}
