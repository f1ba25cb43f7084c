package issuance

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"crypto/hkdf"

	"github.com/tallyauth/tally/dpop"
)

// DPoP (RFC 9449) at the authorization server.
//
// A token request with a DPoP header gets an access token bound to the
// proof's key: cnf.jkt in the JWT or in the sealed opaque token, in
// introspection, and token_type "DPoP". Refresh tokens of public clients
// are bound to the key too (RFC 9449 §5): the key thumbprint is folded into
// the refresh token's MAC, so a refresh with another key, or without a
// proof, fails as an unknown token does (invalid_grant), on every node, with
// no extra state. A client registered dpop_bound must send a proof.
//
// Proof replay (jti) is checked in a bounded per-node cache
// (dpop.ReplayCache), as RFC 9449 §11.1 allows ("within a reasonable
// consideration of accuracy and resource utilization, a jti is unique per
// server"): a cluster-wide check would put a Raft write on every token
// request, which the client credentials grant deliberately never does. A
// proof replayed at another node inside the proof window (60 s by default)
// yields a token bound to the same key, useless without the private key;
// deployments that want more turn on server nonces (DPoPConfig.RequireNonce),
// which bound a captured proof's life to the nonce window and, being derived
// from the cluster's key-encryption key and the time, are valid on any node.

// Error codes of RFC 9449 §5 and §8.
const (
	CodeInvalidDPoPProof = "invalid_dpop_proof"
	CodeUseDPoPNonce     = "use_dpop_nonce"
)

// DPoPConfig configures DPoP at the token endpoint. Zero fields take the
// defaults.
type DPoPConfig struct {
	// RequireNonce makes the token endpoint demand a server nonce in every
	// proof (RFC 9449 §8); a proof without a valid one gets use_dpop_nonce
	// with a fresh DPoP-Nonce header.
	RequireNonce bool
	// ProofWindow is how old (by iat) a proof may be; default 60s. The
	// allowed future skew is Config.Leeway.
	ProofWindow time.Duration
	// NonceWindow is how long a server nonce is fresh; it stays accepted
	// for one more window. Default 5m.
	NonceWindow time.Duration
	// ReplayCapacity bounds the per-node jti cache; default 262144 entries
	// (about 20 MiB). When it is full of live entries, proofs are refused
	// with 503 temporarily_unavailable rather than accepted unchecked.
	ReplayCapacity int
}

type dpopGuard struct {
	cfg    DPoPConfig
	skew   time.Duration
	replay *dpop.ReplayCache
	nonces *dpop.NonceSource
}

func newDPoPGuard(cfg Config) (*dpopGuard, error) {
	c := cfg.DPoP
	if c.ProofWindow <= 0 {
		c.ProofWindow = dpop.DefaultWindow
	}
	if c.NonceWindow <= 0 {
		c.NonceWindow = 5 * time.Minute
	}
	if c.ReplayCapacity <= 0 {
		c.ReplayCapacity = 1 << 18
	}
	skew := max(cfg.Leeway, time.Second)
	secret, err := hkdf.Key(sha256.New, cfg.KEK.hashKey, nil, "tally dpop nonce v1", 32)
	if err != nil {
		return nil, err
	}
	ns, err := dpop.NewNonceSource(secret, c.NonceWindow)
	if err != nil {
		return nil, err
	}
	return &dpopGuard{cfg: c, skew: skew, replay: dpop.NewReplayCache(c.ReplayCapacity, c.ProofWindow+2*skew), nonces: ns}, nil
}

// dpopNonce carries a fresh nonce to writeError, which sends it as the
// DPoP-Nonce header.
type dpopNonce struct{ nonce string }

func (n *dpopNonce) Error() string { return "dpop nonce required" }

func errInvalidDPoP(desc string, debug error) *Error {
	return newError(CodeInvalidDPoPProof, http.StatusBadRequest, desc, debug)
}

// requestURL is the public URL of r: the node's BaseURL and r's path.
func (s *Server) requestURL(r *http.Request) string {
	return s.cfg.BaseURL + r.URL.EscapedPath()
}

// checkDPoP checks the DPoP header of a token request, if any (RFC 9449
// §4.3). It returns nil without a header. The jti is recorded later, by
// useDPoP, once the client is authenticated, so that only clients can fill
// the replay cache.
func (s *Server) checkDPoP(r *http.Request, tenant string, now time.Time) (*dpop.Proof, error) {
	hs := r.Header.Values("DPoP")
	switch {
	case len(hs) == 0:
		return nil, nil
	case len(hs) > 1:
		return nil, errInvalidDPoP("more than one DPoP header", nil)
	}
	p, err := dpop.Parse(hs[0], dpop.Params{Method: r.Method, URL: s.requestURL(r), Now: now,
		Window: s.dpop.cfg.ProofWindow, Skew: s.dpop.skew})
	if err != nil {
		return nil, errInvalidDPoP(dpopDescription(err), err)
	}
	if s.dpop.cfg.RequireNonce && !s.dpop.nonces.Valid(tenant, p.Nonce, now) {
		return nil, newError(CodeUseDPoPNonce, http.StatusBadRequest, "authorization server requires nonce in DPoP proof",
			&dpopNonce{nonce: s.dpop.nonces.Nonce(tenant, now)})
	}
	return p, nil
}

// DPoPDescription is the error_description of a proof dpop.Parse refused:
// fixed text, never request input (for enforcement points outside this
// package: the gateway check).
func DPoPDescription(err error) string { return dpopDescription(err) }

// dpopDescription is the error_description of a refused proof: fixed text,
// never request input.
func dpopDescription(err error) string {
	for _, e := range []struct {
		err  error
		desc string
	}{
		{dpop.ErrMethod, "DPoP proof htm does not match the request"},
		{dpop.ErrURI, "DPoP proof htu does not match the request"},
		{dpop.ErrIssuedAt, "DPoP proof iat is outside the accepted window"},
		{dpop.ErrATH, "DPoP proof ath does not match the access token"},
		{dpop.ErrAlg, "DPoP proof algorithm not supported"},
		{dpop.ErrKey, "DPoP proof jwk is not a supported public key"},
		{dpop.ErrSignature, "DPoP proof signature is invalid"},
		{dpop.ErrType, "DPoP proof typ must be dpop+jwt"},
		{dpop.ErrJTI, "DPoP proof jti is missing"},
	} {
		if errors.Is(err, e.err) {
			return e.desc
		}
	}
	return "malformed DPoP proof"
}

// useDPoP enforces a client's dpop_bound setting and records the proof's
// jti (RFC 9449 §11.1).
func (s *Server) useDPoP(c Client, p *dpop.Proof, now time.Time) error {
	if p == nil {
		if c.DPoPBound {
			return errInvalidDPoP("this client must send a DPoP proof", nil)
		}
		return nil
	}
	switch err := s.dpop.replay.Use(p.JKT, p.JTI, now); {
	case errors.Is(err, dpop.ErrReplayed):
		return errInvalidDPoP("DPoP proof jti was already used", err)
	case err != nil:
		return errUnavailable("DPoP replay cache full, retry", err)
	}
	return nil
}

// jkt is the key the request's tokens are bound to, "" without DPoP.
func (gr GrantRequest) jkt() string {
	if gr.DPoP == nil {
		return ""
	}
	return gr.DPoP.JKT
}

// tokenType is the token_type of the response (RFC 9449 §5).
func (gr GrantRequest) tokenType() string {
	if gr.DPoP != nil {
		return "DPoP"
	}
	return "Bearer"
}

// refreshBound is what a new refresh family of a public client is bound
// to (confidential clients' refresh tokens are bound to their client
// authentication already): the DPoP proof key (RFC 9449 §5), else the
// client certificate the request presented (RFC 8705 §4; certBinding).
func (gr GrantRequest) refreshBound(ctx context.Context) string {
	switch {
	case !gr.Client.Public:
		return ""
	case gr.DPoP != nil:
		return gr.DPoP.JKT
	}
	return certBinding(boundThumbprint(ctx))
}

func (c *confirmation) jkt() string {
	if c == nil {
		return ""
	}
	return c.JKT
}

func tokenTypeOf(d tokenData) string {
	if d.JKT != "" {
		return "DPoP"
	}
	return "Bearer"
}

// refreshBinding is the MAC input suffix of a refresh token bound to a
// DPoP key (bound is its thumbprint) or a certificate (certBinding).
func refreshBinding(bound string) string {
	if x5t, ok := certBound(bound); ok {
		return fmt.Sprintf("\x00mtls\x00%s", x5t)
	}
	if bound == "" {
		return ""
	}
	return fmt.Sprintf("\x00dpop\x00%s", bound)
}

// checkResourceDPoP applies RFC 9449 §7 at the resource endpoints of the
// server itself (userinfo): a DPoP-bound token must come with the DPoP
// scheme and a proof of its key whose ath is the token's hash; a bearer
// token must not use the DPoP scheme. On failure it writes the DPoP
// challenge and returns false.
func (s *Server) checkResourceDPoP(w http.ResponseWriter, r *http.Request, tok string, d tokenData, isDPoP bool, now time.Time) bool {
	switch {
	case !isDPoP && d.JKT == "":
		return true
	case !isDPoP:
		s.dpopChallenge(w, r, "invalid_token", "the access token is DPoP-bound; use the DPoP scheme with a proof")
		return false
	case d.JKT == "":
		s.dpopChallenge(w, r, "invalid_token", "the access token is not DPoP-bound")
		return false
	}
	hs := r.Header.Values("DPoP")
	if len(hs) != 1 {
		s.dpopChallenge(w, r, CodeInvalidDPoPProof, "exactly one DPoP proof is required")
		return false
	}
	p, err := dpop.Parse(hs[0], dpop.Params{Method: r.Method, URL: s.requestURL(r), Now: now,
		Window: s.dpop.cfg.ProofWindow, Skew: s.dpop.skew, AccessToken: tok})
	if err != nil {
		s.dpopChallenge(w, r, CodeInvalidDPoPProof, dpopDescription(err))
		return false
	}
	if p.JKT != d.JKT {
		s.dpopChallenge(w, r, CodeInvalidDPoPProof, "DPoP proof key is not the key the token is bound to")
		return false
	}
	if err := s.dpop.replay.Use(p.JKT, p.JTI, now); err != nil {
		s.dpopChallenge(w, r, CodeInvalidDPoPProof, "DPoP proof jti was already used")
		return false
	}
	return true
}

// dpopChallenge writes a 401 with an RFC 9449 §7.1 DPoP challenge.
func (s *Server) dpopChallenge(w http.ResponseWriter, r *http.Request, code, desc string) {
	w.Header().Set("WWW-Authenticate", `DPoP algs="`+strings.Join(dpop.SigningAlgs, " ")+`", error="`+code+`", error_description="`+desc+`"`)
	body := []byte(`{"error":"` + code + `","error_description":"` + desc + `"}`)
	writeJSON(w, http.StatusUnauthorized, body, "no-store")
}

// validJKT reports whether s looks like a SHA-256 JWK thumbprint:
// 43 base64url characters (the dpop_jkt parameter, RFC 9449 §10).
func validJKT(s string) bool {
	if len(s) != 43 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
