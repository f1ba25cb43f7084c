package revocation

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tallyauth/tally/dpop"
)

// DPoP (RFC 9449) at the resource server.
//
// A token bound to a DPoP key (Claims.JKT, from cnf.jkt) is accepted only
// with the DPoP authorization scheme and a DPoP proof signed by that key,
// made for this request (htm, htu), fresh (iat), never seen before (jti,
// per Verifier) and carrying ath, the hash of the token (RFC 9449 §7.1).
// A bound token presented as a Bearer token is refused (§7.2), and so is an
// unbound token presented with the DPoP scheme. Failures answer 401 with
// a WWW-Authenticate: DPoP challenge naming the error.

// DPoPConfig configures the DPoP checks of VerifyRequest and Middleware.
type DPoPConfig struct {
	// RequestURL returns the URL the client addressed (the proof's htu);
	// default: http or https (by r.TLS), r.Host and r.URL's path. Set it
	// behind a proxy that rewrites the scheme, host or path.
	RequestURL func(r *http.Request) string
	// ProofWindow is how old (by iat) a proof may be; default 60s. The
	// allowed future skew is Config.Leeway.
	ProofWindow time.Duration
	// ReplayCapacity bounds the jti cache; default 65536. When it is full
	// of live proofs, requests with new proofs are refused.
	ReplayCapacity int
}

// ErrInvalidDPoPProof: the request's DPoP proof is missing, malformed,
// not for this request, replayed, or signed by another key than the one
// the token is bound to.
var ErrInvalidDPoPProof = errors.New("revocation: invalid DPoP proof")

// ErrDPoPBinding: a DPoP-bound token presented as a Bearer token, or an
// unbound token presented with the DPoP scheme.
var ErrDPoPBinding = errors.New("revocation: token and authorization scheme do not match")

// errNoToken: no usable Authorization header.
var errNoToken = errors.New("revocation: no access token")

// cnf is the confirmation claim (RFC 7800).
func (c *Confirmation) jkt() string {
	if c == nil {
		return ""
	}
	return c.JKT
}

type dpopChecker struct {
	cfg    DPoPConfig
	skew   time.Duration
	now    func() time.Time
	replay *dpop.ReplayCache
}

func newDPoPChecker(cfg Config) *dpopChecker {
	c := cfg.DPoP
	if c.ProofWindow <= 0 {
		c.ProofWindow = dpop.DefaultWindow
	}
	if c.ReplayCapacity <= 0 {
		c.ReplayCapacity = 1 << 16
	}
	if c.RequestURL == nil {
		c.RequestURL = defaultRequestURL
	}
	skew := max(cfg.Leeway, time.Second)
	return &dpopChecker{cfg: c, skew: skew, now: cfg.Now, replay: dpop.NewReplayCache(c.ReplayCapacity, c.ProofWindow+2*skew)}
}

func defaultRequestURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + r.URL.EscapedPath()
}

// check applies the binding rules to a verified token c presented as tok
// with scheme DPoP (isDPoP) or Bearer.
func (d *dpopChecker) check(r *http.Request, tok string, c *Claims, isDPoP bool) error {
	switch {
	case !isDPoP && c.JKT == "":
		return nil
	case !isDPoP:
		return fmt.Errorf("%w: DPoP-bound token sent as a Bearer token", ErrDPoPBinding)
	case c.JKT == "":
		return fmt.Errorf("%w: bearer token sent with the DPoP scheme", ErrDPoPBinding)
	}
	hs := r.Header.Values("DPoP")
	if len(hs) != 1 {
		return fmt.Errorf("%w: %d DPoP headers", ErrInvalidDPoPProof, len(hs))
	}
	now := d.now()
	p, err := dpop.Parse(hs[0], dpop.Params{Method: r.Method, URL: d.cfg.RequestURL(r), Now: now,
		Window: d.cfg.ProofWindow, Skew: d.skew, AccessToken: tok})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidDPoPProof, err)
	}
	if p.JKT != c.JKT {
		return fmt.Errorf("%w: proof key is not the key the token is bound to", ErrInvalidDPoPProof)
	}
	if err := d.replay.Use(p.JKT, p.JTI, now); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidDPoPProof, err)
	}
	return nil
}

// VerifyRequest verifies the access token of r: the Authorization header
// with the Bearer (RFC 6750 §2.1) or the DPoP (RFC 9449 §7.1) scheme, the
// token as Verify does, and the DPoP binding: a bound token needs the DPoP
// scheme and a valid proof of its key with ath; a bearer token must not use
// the DPoP scheme. DPoP failures wrap ErrInvalidDPoPProof or ErrDPoPBinding
// (ReasonOf: ReasonDPoPProof, ReasonDPoPBinding).
func (v *Verifier) VerifyRequest(r *http.Request) (*Claims, error) {
	authz := r.Header.Values("Authorization")
	if len(authz) != 1 {
		return nil, errNoToken
	}
	scheme, tok, ok := strings.Cut(authz[0], " ")
	tok = strings.TrimSpace(tok)
	isDPoP := strings.EqualFold(scheme, "DPoP")
	if !ok || tok == "" || (!isDPoP && !strings.EqualFold(scheme, "Bearer")) {
		return nil, errNoToken
	}
	// As Verify, with the binding check before the outcome is recorded.
	c, err := v.verify(r.Context(), tok)
	if err == nil {
		err = v.dpop.check(r, tok, c, isDPoP)
	}
	v.record(r.Context(), err)
	if err != nil {
		return nil, v.reject(r.Context(), err)
	}
	return c, nil
}

// challenge is a DPoP WWW-Authenticate challenge (RFC 9449 §7.1).
func (d *dpopChecker) challenge(code, desc string) string {
	ch := `DPoP algs="` + strings.Join(dpop.SigningAlgs, " ") + `"`
	if code != "" {
		ch += `, error="` + code + `", error_description="` + desc + `"`
	}
	return ch
}

// dpopChallenged answers a DPoP failure with 401 and its challenge.
func (v *Verifier) dpopChallenged(w http.ResponseWriter, err error) bool {
	var code string
	switch {
	case errors.Is(err, ErrInvalidDPoPProof):
		code = "invalid_dpop_proof"
	case errors.Is(err, ErrDPoPBinding):
		code = "invalid_token"
	default:
		return false
	}
	desc := ReasonOf(err).Description()
	w.Header().Set("WWW-Authenticate", v.dpop.challenge(code, desc))
	http.Error(w, "invalid token: "+desc, http.StatusUnauthorized)
	return true
}
