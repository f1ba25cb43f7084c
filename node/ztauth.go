package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/issuance"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Zero-trust clients (issue 11): TLS with optional client certificates on
// the OAuth listener, the trusted proxies that may forward a client
// certificate, and the cluster-wide ledger of client assertion ids.

// ZTConfig configures mutual TLS and client assertions.
type ZTConfig struct {
	// TLSCert and TLSKey (PEM files) make the OAuth listener serve TLS and
	// request — not require — a client certificate (RFC 8705). The
	// certificate is checked per tenant and client, not by the handshake.
	TLSCert string
	TLSKey  string
	// TrustedProxies (addresses or CIDR prefixes) may forward the client
	// certificate in ClientCertHeader (default "Client-Cert", RFC 9440).
	TrustedProxies   []string
	ClientCertHeader string
	// MTLSBaseURL is advertised as the base of mtls_endpoint_aliases when
	// client certificates are accepted elsewhere than at the issuer.
	MTLSBaseURL string
	// AllowPrivateJWKS lets jwks_uri and federation discovery reach
	// private and loopback addresses (always allowed with --dev).
	AllowPrivateJWKS bool
}

// featureZTAuth names the ConsumeAssertion and SetTenantTrust operations
// (raft ops 90, 91) in MemberStatus.features.
const featureZTAuth = raft.FeatureZTAuth

// ztPrefixes parses TrustedProxies.
func (c ZTConfig) ztPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.TrustedProxies {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("node: trusted proxy %q: want an address or a CIDR prefix", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// oauthTLS wraps the OAuth listener in TLS when a certificate is
// configured: client certificates are requested, never required, and
// verified by issuance against the tenant's trust.
func (c ZTConfig) oauthTLS(ln net.Listener) (net.Listener, bool, error) {
	if c.TLSCert == "" && c.TLSKey == "" {
		return ln, false, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, false, fmt.Errorf("node: --tls-cert/--tls-key: %w", err)
	}
	return tls.NewListener(ln, &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}), true, nil
}

// ztIssuanceConfig is the issuance side of ZTConfig.
func (n *Node) ztIssuanceConfig() (issuance.ZeroTrustConfig, error) {
	prefixes, err := n.cfg.ZeroTrust.ztPrefixes()
	if err != nil {
		return issuance.ZeroTrustConfig{}, err
	}
	return issuance.ZeroTrustConfig{
		Assertions:         &raftLedger{n: n, local: issuance.NewMemoryAssertionLedger(100_000), gate: newFeatureGate(n.cl, featureZTAuth)},
		TrustedProxies:     prefixes,
		ClientCertHeader:   n.cfg.ZeroTrust.ClientCertHeader,
		MTLSBaseURL:        n.cfg.ZeroTrust.MTLSBaseURL,
		ClientCertificates: n.cfg.ZeroTrust.TLSCert != "",
		Fetch: issuance.FetchPolicy{
			AllowHTTP:    n.cfg.Dev,
			AllowPrivate: n.cfg.Dev || n.cfg.ZeroTrust.AllowPrivateJWKS,
		},
	}, nil
}

// raftLedger makes client assertion ids single-use across the cluster:
// one ConsumeAssertion Raft write per assertion. In front of it a local
// ledger refuses a replay at this node without a write (and without a
// round-trip to the leader); the Raft write is what refuses one at another
// node. It fails closed: while some voter does not know the operation
// (rolling upgrade), or Raft cannot commit, assertions are refused with
// temporarily_unavailable.
type raftLedger struct {
	n     *Node
	local *issuance.MemoryAssertionLedger
	gate  *featureGate // par.go
}

func (l *raftLedger) ConsumeAssertion(ctx context.Context, tenant, clientID, jti string, exp time.Time) error {
	if l.local.Seen(tenant, clientID, jti) {
		return issuance.ErrAssertionReplayed
	}
	if !l.gate.allow(ctx) {
		return fmt.Errorf("%w: not every voter supports %s yet", ErrUnavailable, featureZTAuth)
	}
	k := issuance.AssertionKey(clientID, jti)
	ctx, cancel := context.WithTimeout(ctx, l.n.cfg.WriteTimeout)
	defer cancel()
	_, err := l.n.rep.propose(ctx, &raftpb.Command{Op: &raftpb.Command_ConsumeAssertion{ConsumeAssertion: &raftpb.ConsumeAssertion{
		Tenant: tenant, ClientId: clientID, Key: k[:], ExpiresUnixNano: exp.UnixNano()}}})
	switch {
	case errors.Is(err, raft.ErrExists):
		_ = l.local.ConsumeAssertion(ctx, tenant, clientID, jti, exp)
		return issuance.ErrAssertionReplayed
	case errors.Is(err, raft.ErrInvalid):
		return issuance.ErrAssertionReplayed // expired at command time: refuse as a replay would be
	case err != nil:
		return err
	}
	_ = l.local.ConsumeAssertion(ctx, tenant, clientID, jti, exp)
	return nil
}

// ----- conversions -----

func clientAuthFromPB(a *raftpb.ClientAuth) issuance.ClientAuth {
	if a == nil {
		return issuance.ClientAuth{}
	}
	return issuance.ClientAuth{Methods: raft.AuthMethodsOf(a), JWKS: a.Jwks, JWKSURI: a.JwksUri,
		TLSSubjectDN: a.TlsSubjectDn, TLSSANDNS: a.TlsSanDns, TLSSANURI: a.TlsSanUri}
}

func trustFromPB(t *raftpb.TenantTrust) issuance.TenantTrust {
	if t == nil {
		return issuance.TenantTrust{}
	}
	out := issuance.TenantTrust{ClientCAPEM: t.ClientCaPem, UpdatedAt: unixNano(t.UpdatedUnixNano)}
	for _, f := range t.Federations {
		m := make(map[string]string, len(f.Subjects))
		for _, s := range f.Subjects {
			m[s.Subject] = s.ClientId
		}
		out.Federations = append(out.Federations, issuance.FederationTrust{Name: f.Name, Issuer: f.Issuer,
			JWKS: f.Jwks, JWKSURI: f.JwksUri, Audience: f.Audience, Subjects: m})
	}
	return out
}

func clientAuthToAdmin(a *raftpb.ClientAuth) *adminv1.ClientAuth {
	if a == nil {
		return nil
	}
	return &adminv1.ClientAuth{Methods: raft.AuthMethodsOf(a), Jwks: string(a.Jwks), JwksUri: a.JwksUri,
		TlsSubjectDn: a.TlsSubjectDn, TlsSanDns: a.TlsSanDns, TlsSanUri: a.TlsSanUri}
}

// clientAuthFromAdmin checks and converts a registration's auth settings.
func clientAuthFromAdmin(a *adminv1.ClientAuth, public bool) (*raftpb.ClientAuth, error) {
	if a == nil {
		return nil, nil
	}
	out := &raftpb.ClientAuth{Methods: dedupe(a.Methods), Jwks: []byte(strings.TrimSpace(a.Jwks)), JwksUri: a.JwksUri,
		TlsSubjectDn: a.TlsSubjectDn, TlsSanDns: a.TlsSanDns, TlsSanUri: a.TlsSanUri}
	if public && len(out.Methods) > 0 {
		return nil, invalid("a public client has no authentication method")
	}
	if len(out.Jwks) > 0 {
		if _, err := issuance.ParseClientJWKS(out.Jwks); err != nil {
			return nil, invalid("%v", err)
		}
	}
	if out.TlsSubjectDn != "" {
		if err := issuance.ValidateDN(out.TlsSubjectDn); err != nil {
			return nil, invalid("tls subject DN: %v", err)
		}
	}
	if len(out.Jwks) > 0 && out.JwksUri != "" {
		return nil, invalid("give a JWKS or a jwks_uri, not both")
	}
	if out.JwksUri != "" && !strings.HasPrefix(out.JwksUri, "https://") && !strings.HasPrefix(out.JwksUri, "http://") {
		return nil, invalid("jwks_uri must be an https URL")
	}
	if len(out.Methods) == 0 && len(out.Jwks) == 0 && out.JwksUri == "" && out.TlsSubjectDn == "" && out.TlsSanDns == "" && out.TlsSanUri == "" {
		return nil, nil
	}
	if err := raft.CheckClientAuth(out); err != nil {
		return nil, invalid("%v", err)
	}
	return out, nil
}

// needsSecret reports whether a client with these settings gets a secret.
func needsSecret(a *raftpb.ClientAuth) bool {
	if a == nil || len(a.Methods) == 0 {
		return true
	}
	for _, m := range a.Methods {
		if m == issuance.AuthMethodClientSecretBasic || m == issuance.AuthMethodClientSecretPost {
			return true
		}
	}
	return false
}

func trustToAdmin(t *raftpb.TenantTrust) *adminv1.TenantTrust {
	out := &adminv1.TenantTrust{}
	if t == nil {
		return out
	}
	out.ClientCaPem = string(t.ClientCaPem)
	if t.UpdatedUnixNano != 0 {
		out.UpdatedAt = timestamppb.New(time.Unix(0, t.UpdatedUnixNano))
	}
	for _, f := range t.Federations {
		af := &adminv1.FederationTrust{Name: f.Name, Issuer: f.Issuer, Jwks: string(f.Jwks), JwksUri: f.JwksUri, Audience: f.Audience}
		for _, s := range f.Subjects {
			af.Subjects = append(af.Subjects, &adminv1.SubjectMapping{Subject: s.Subject, ClientId: s.ClientId})
		}
		out.Federations = append(out.Federations, af)
	}
	return out
}

func trustFromAdmin(t *adminv1.TenantTrust) (*raftpb.TenantTrust, error) {
	out := &raftpb.TenantTrust{}
	if t == nil {
		return out, nil
	}
	out.ClientCaPem = []byte(strings.TrimSpace(t.ClientCaPem))
	if len(out.ClientCaPem) > 0 {
		if err := checkCAPEM(out.ClientCaPem); err != nil {
			return nil, err
		}
	}
	for _, f := range t.Federations {
		rf := &raftpb.FederationTrust{Name: f.Name, Issuer: strings.TrimSpace(f.Issuer), Jwks: []byte(strings.TrimSpace(f.Jwks)),
			JwksUri: f.JwksUri, Audience: f.Audience}
		if len(rf.Jwks) > 0 {
			if _, err := issuance.ParseClientJWKS(rf.Jwks); err != nil {
				return nil, invalid("federation %q: %v", f.Name, err)
			}
		}
		for _, s := range f.Subjects {
			rf.Subjects = append(rf.Subjects, &raftpb.SubjectMapping{Subject: s.Subject, ClientId: s.ClientId})
		}
		out.Federations = append(out.Federations, rf)
	}
	if err := raft.CheckTenantTrust(&raftpb.SetTenantTrust{Tenant: "x", Trust: out}); err != nil {
		return nil, invalid("%v", err)
	}
	return out, nil
}

// ----- admin RPCs -----

func (a *adminService) SetTenantTrust(ctx context.Context, req *connect.Request[adminv1.SetTenantTrustRequest]) (*connect.Response[adminv1.SetTenantTrustResponse], error) {
	m := req.Msg
	if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	tr, err := trustFromAdmin(m.Trust)
	if err != nil {
		return nil, err
	}
	st := a.rep.rn.State()
	for _, f := range tr.Federations {
		for _, s := range f.Subjects {
			if _, ok := st.Client(m.Tenant, s.ClientId); !ok {
				return nil, invalid("federation %q: client %q not found", f.Name, s.ClientId)
			}
		}
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetTenantTrust{SetTenantTrust: &raftpb.SetTenantTrust{Tenant: m.Tenant, Trust: tr}}}); err != nil {
		return nil, err
	}
	t, _ := a.rep.rn.State().Tenant(m.Tenant)
	return connect.NewResponse(&adminv1.SetTenantTrustResponse{Trust: trustToAdmin(t.GetTrust())}), nil
}

func (a *adminService) GetTenantTrust(_ context.Context, req *connect.Request[adminv1.GetTenantTrustRequest]) (*connect.Response[adminv1.GetTenantTrustResponse], error) {
	t, ok := a.rep.rn.State().Tenant(req.Msg.Tenant)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", req.Msg.Tenant))
	}
	return connect.NewResponse(&adminv1.GetTenantTrustResponse{Trust: trustToAdmin(t.GetTrust())}), nil
}

func checkCAPEM(b []byte) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return invalid("client CA: no PEM certificate")
	}
	return nil
}
