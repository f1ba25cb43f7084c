package issuance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Mutual-TLS client authentication and certificate-bound access tokens
// (RFC 8705). The client certificate comes from the TLS connection (the
// node terminates TLS and requests, without requiring, a client
// certificate) or, behind a TLS-terminating proxy, from ClientCertHeader —
// only when the request's peer address is a configured trusted proxy.

type certKey struct{}

// presentedCert is the client certificate of one request. bound is set
// once the client authenticated with it: its tokens then carry
// cnf.x5t#S256 (RFC 8705 §3).
type presentedCert struct {
	cert  *x509.Certificate
	chain []*x509.Certificate // intermediates the client sent
	mu    sync.Mutex
	bound bool
}

// Thumbprint is the RFC 8705 §3.1 x5t#S256 of a certificate: the
// base64url SHA-256 of its DER.
func Thumbprint(der []byte) string {
	h := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(h[:])
}

func (pc *presentedCert) setBound() {
	pc.mu.Lock()
	pc.bound = true
	pc.mu.Unlock()
}

// boundThumbprint is the x5t#S256 tokens minted under ctx are bound to, or
// "".
func boundThumbprint(ctx context.Context) string {
	pc := clientCertFrom(ctx)
	if pc == nil {
		return ""
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if !pc.bound {
		return ""
	}
	return Thumbprint(pc.cert.Raw)
}

// withClientCert puts the request's client certificate in its context. The
// proxy header is always removed from the request; it is read only when
// the peer is a trusted proxy and the connection itself carries no
// certificate.
func (s *Server) withClientCert(next http.Handler) http.Handler {
	header := s.zt.cfg.ClientCertHeader
	if header == "" {
		header = defaultClientCertHeader
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hv := r.Header.Values(header)
		if len(hv) > 0 {
			r.Header.Del(header)
		}
		var pc *presentedCert
		switch {
		case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
			pc = &presentedCert{cert: r.TLS.PeerCertificates[0], chain: r.TLS.PeerCertificates[1:]}
		case len(hv) == 1 && s.trustedProxy(r.RemoteAddr):
			// A malformed header counts as no certificate: certificate
			// authentication then fails (invalid_client), other requests
			// are unaffected.
			if certs, err := ParseClientCertHeader(hv[0]); err == nil {
				pc = &presentedCert{cert: certs[0], chain: certs[1:]}
			} else {
				s.log.Debug("issuance: malformed client certificate header from a trusted proxy", "err", err)
			}
		case len(hv) > 1 && s.trustedProxy(r.RemoteAddr):
			s.writeError(w, r, errInvalidRequest("more than one client certificate header"))
			return
		}
		if pc != nil {
			r = r.WithContext(context.WithValue(r.Context(), certKey{}, pc))
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) trustedProxy(remote string) bool {
	if len(s.zt.cfg.TrustedProxies) == 0 {
		return false
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return slices.ContainsFunc(s.zt.cfg.TrustedProxies, func(p netip.Prefix) bool { return p.Contains(a) })
}

// maxCertHeaderLen bounds the client certificate header.
const maxCertHeaderLen = 32 << 10

// ParseClientCertHeader parses a client certificate forwarded by a proxy:
// RFC 9440's Client-Cert (":" base64 DER ":"), URL-escaped PEM (nginx
// $ssl_client_escaped_cert, Envoy, Traefik) or plain PEM. PEM may hold the
// chain after the leaf.
func ParseClientCertHeader(v string) ([]*x509.Certificate, error) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > maxCertHeaderLen {
		return nil, errors.New("empty or overlong certificate header")
	}
	if strings.HasPrefix(v, ":") && strings.HasSuffix(v, ":") && len(v) >= 2 {
		der, err := base64.StdEncoding.DecodeString(v[1 : len(v)-1])
		if err != nil {
			return nil, errors.New("certificate header: bad base64")
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, errors.New("certificate header: bad certificate")
		}
		return []*x509.Certificate{c}, nil
	}
	if strings.Contains(v, "%") {
		u, err := url.QueryUnescape(v)
		if err != nil {
			return nil, errors.New("certificate header: bad escape")
		}
		v = u
	}
	rest := []byte(v)
	var out []*x509.Certificate
	for len(out) < 8 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, errors.New("certificate header: bad certificate")
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("certificate header: no certificate")
	}
	return out, nil
}

// authenticateCert authenticates the client named by client_id with the
// request's certificate: tls_client_auth (chain to the tenant's CA, subject
// DN or SAN as registered) or self_signed_tls_client_auth (the
// certificate's public key is one of the client's registered JWKs).
func (s *Server) authenticateCert(ctx context.Context, tenant string, cc ClientCredentials, now time.Time) (Client, error) {
	pc := clientCertFrom(ctx)
	if pc == nil || cc.ID == "" || len(cc.ID) > maxCredentialLen {
		return Client{}, errInvalidClient("client authentication failed", errors.New("no client credentials"))
	}
	c, err := s.st.Client(ctx, tenant, cc.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Client{}, errInvalidClient("client authentication failed", errors.New("unknown client"))
	case err != nil:
		return Client{}, errUnavailable("client lookup failed", err)
	}
	var reasons []string
	if c.Auth.allows(AuthMethodTLSClientAuth) {
		if err := checkZTClient(c, tenant, AuthMethodTLSClientAuth); err != nil {
			return Client{}, err
		}
		err := s.verifyPKICert(ctx, tenant, c.Auth, pc, now)
		if err == nil {
			pc.setBound()
			return c, nil
		}
		reasons = append(reasons, "tls_client_auth: "+err.Error())
	}
	if c.Auth.allows(AuthMethodSelfSignedTLSClientAuth) {
		if err := checkZTClient(c, tenant, AuthMethodSelfSignedTLSClientAuth); err != nil {
			return Client{}, err
		}
		err := verifySelfSignedCert(s.zt.inline, c.Auth, pc.cert, now)
		if err == nil {
			pc.setBound()
			return c, nil
		}
		reasons = append(reasons, "self_signed_tls_client_auth: "+err.Error())
	}
	if len(reasons) == 0 {
		reasons = append(reasons, "client has no certificate method (or sent no secret)")
	}
	return Client{}, errInvalidClient("client authentication failed", errors.New(strings.Join(reasons, "; ")))
}

// verifyPKICert checks a tls_client_auth certificate: a chain to one of the
// tenant's client CAs, valid now, for client authentication, and the
// subject DN, DNS SAN or URI SAN the client registered.
func (s *Server) verifyPKICert(ctx context.Context, tenant string, a ClientAuth, pc *presentedCert, now time.Time) error {
	t, err := s.st.Tenant(ctx, tenant)
	if err != nil {
		return err
	}
	pool, err := s.zt.pools.get(tenant, t.Trust)
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, c := range pc.chain {
		inter.AddCert(c)
	}
	if _, err := pc.cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return errors.New("certificate does not chain to the tenant's client CA")
	}
	switch {
	case a.TLSSubjectDN != "" && subjectMatches(pc.cert.RawSubject, a.TLSSubjectDN): // dn.go
	case a.TLSSANDNS != "" && slices.Contains(pc.cert.DNSNames, a.TLSSANDNS):
	case a.TLSSANURI != "" && slices.ContainsFunc(pc.cert.URIs, func(u *url.URL) bool { return u.String() == a.TLSSANURI }):
	default:
		return errors.New("certificate subject does not match the registration")
	}
	return nil
}

// verifySelfSignedCert checks a self_signed_tls_client_auth certificate:
// valid now and its public key one of the client's registered JWKs (RFC
// 8705 §2.2; no chain is built).
func verifySelfSignedCert(inline *jwksCache, a ClientAuth, cert *x509.Certificate, now time.Time) error {
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return errors.New("certificate expired or not yet valid")
	}
	set, err := inline.parse(a.JWKS)
	if err != nil {
		return err
	}
	want, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		return errors.New("certificate key unsupported")
	}
	for _, k := range set.Keys {
		got, err := x509.MarshalPKIXPublicKey(k.Key)
		if err == nil && bytes.Equal(got, want) {
			return nil
		}
	}
	return errors.New("certificate key is not a registered key of the client")
}

// caPools caches each tenant's parsed client CA pool by version.
type caPools struct {
	mu sync.Mutex
	m  map[string]caPoolEntry
}

type caPoolEntry struct {
	ver  time.Time
	pem  int
	pool *x509.CertPool
}

func (p *caPools) get(tenant string, t TenantTrust) (*x509.CertPool, error) {
	if len(t.ClientCAPEM) == 0 {
		return nil, errors.New("tenant has no client CA")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.m[tenant]; ok && e.ver.Equal(t.UpdatedAt) && e.pem == len(t.ClientCAPEM) {
		return e.pool, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(t.ClientCAPEM) {
		return nil, errors.New("tenant client CA unparseable")
	}
	if p.m == nil {
		p.m = make(map[string]caPoolEntry)
	}
	p.m[tenant] = caPoolEntry{ver: t.UpdatedAt, pem: len(t.ClientCAPEM), pool: pool}
	return pool, nil
}
