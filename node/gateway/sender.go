package gateway

import (
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tallyauth/tally/dpop"
	"github.com/tallyauth/tally/issuance"
)

// Sender-constrained tokens at the gateway (issue 12; RFC 9449 §7, RFC
// 8705 §3). A DPoP-bound token (cnf.jkt) passes only with the DPoP
// authorization scheme and one DPoP proof of its key made for the original
// request: htm its method, htu its URL (Request.URL), ath the token's hash,
// iat fresh, jti not seen by this checker before (a bounded per-process
// cache, like the SDK's). A bound token sent as a Bearer token, or an
// unbound one with the DPoP scheme, is refused with a DPoP challenge. A
// certificate-bound token (cnf.x5t#S256) passes only when the gateway
// forwarded the client certificate it was issued for (Request.ClientCert:
// the Client-Cert header of a trusted gateway, or Envoy's view of the
// downstream peer). Failures are 401 with the scheme's challenge.

// scheme is how the token was presented.
type scheme int

const (
	schemeBearer scheme = iota
	schemeDPoP
)

// credentials extracts the token of an Authorization header with the
// Bearer (RFC 6750 §2.1) or DPoP (RFC 9449 §7.1) scheme.
func credentials(authz string) (string, scheme, bool) {
	name, tok, ok := strings.Cut(authz, " ")
	if !ok {
		return "", 0, false
	}
	var sc scheme
	switch {
	case strings.EqualFold(name, "Bearer"):
		sc = schemeBearer
	case strings.EqualFold(name, "DPoP"):
		sc = schemeDPoP
	default:
		return "", 0, false
	}
	tok = strings.TrimSpace(tok)
	return tok, sc, tok != "" && len(tok) <= 16<<10
}

// defaultReplayCapacity bounds the checker's DPoP jti cache.
const defaultReplayCapacity = 1 << 16

func (c *Checker) replayCache() *dpop.ReplayCache {
	c.replayOnce.Do(func() {
		c.replay = dpop.NewReplayCache(defaultReplayCapacity, c.dpopWindow()+2*dpopSkew)
	})
	return c.replay
}

// dpopSkew is how far in the future a proof's iat may be.
const dpopSkew = 5 * time.Second

func (c *Checker) dpopWindow() time.Duration {
	if c.DPoPWindow > 0 {
		return c.DPoPWindow
	}
	return dpop.DefaultWindow
}

// checkSender applies the binding of id to the request; ok false with the
// denial.
func (c *Checker) checkSender(req Request, token string, sc scheme, id *Identity) (Decision, bool) {
	switch {
	case id.JKT == "" && sc == schemeDPoP:
		return c.dpopChallenge("invalid_token", "the access token is not DPoP-bound; use the Bearer scheme"), false
	case id.JKT != "" && sc != schemeDPoP:
		return c.dpopChallenge("invalid_token", "the access token is DPoP-bound; use the DPoP scheme with a proof"), false
	case id.JKT != "":
		if len(req.DPoP) != 1 {
			return c.dpopChallenge(issuance.CodeInvalidDPoPProof, "exactly one DPoP proof is required"), false
		}
		if req.URL == "" {
			return c.dpopChallenge(issuance.CodeInvalidDPoPProof, "the gateway did not forward the request URL the proof is checked against"), false
		}
		now := c.now()
		p, err := dpop.Parse(req.DPoP[0], dpop.Params{Method: req.Method, URL: req.URL, Now: now,
			Window: c.dpopWindow(), Skew: dpopSkew, AccessToken: token})
		if err != nil {
			return c.dpopChallenge(issuance.CodeInvalidDPoPProof, issuance.DPoPDescription(err)), false
		}
		if subtle.ConstantTimeCompare([]byte(p.JKT), []byte(id.JKT)) != 1 {
			return c.dpopChallenge(issuance.CodeInvalidDPoPProof, "DPoP proof key is not the key the token is bound to"), false
		}
		switch err := c.replayCache().Use(p.JKT, p.JTI, now); {
		case errors.Is(err, dpop.ErrReplayed):
			return c.dpopChallenge(issuance.CodeInvalidDPoPProof, "DPoP proof jti was already used"), false
		case err != nil:
			return Decision{Status: http.StatusServiceUnavailable, Headers: http.Header{"Retry-After": {"1"}}, Reason: "DPoP replay cache full"}, false
		}
	}
	if id.X5T != "" {
		if req.ClientCert == nil {
			return c.challenge(statusUnauthorized, "invalid_token", "the access token is bound to a client certificate the request did not present", ""), false
		}
		if subtle.ConstantTimeCompare([]byte(issuance.Thumbprint(req.ClientCert.Raw)), []byte(id.X5T)) != 1 {
			return c.challenge(statusUnauthorized, "invalid_token", "the access token is bound to another client certificate", ""), false
		}
	}
	return Decision{}, true
}

// dpopChallenge is a 401 with an RFC 9449 §7.1 DPoP challenge.
func (c *Checker) dpopChallenge(code, desc string) Decision {
	v := `DPoP algs="` + strings.Join(dpop.SigningAlgs, " ") + `", error="` + code + `", error_description="` + issuance.SafeDescription(desc) + `"`
	return Decision{Status: statusUnauthorized, Headers: http.Header{"Www-Authenticate": {v}}, Reason: desc}
}

// ClientCertHeader is the header a trusted gateway forwards the client's
// certificate in: RFC 9440's Client-Cert (":" base64 DER ":"), or URL-escaped
// PEM (nginx $ssl_client_escaped_cert).
const ClientCertHeader = "Client-Cert"

// forwardedCert is the client certificate a trusted gateway forwarded, nil
// if none, the peer is not trusted, or the header is malformed (a bound
// token is then refused, a bearer token unaffected).
func forwardedCert(r *http.Request, trusted []netipPrefix) *x509.Certificate {
	hv := r.Header.Values(ClientCertHeader)
	if len(hv) != 1 || !isTrusted(r, trusted) {
		return nil
	}
	certs, err := issuance.ParseClientCertHeader(hv[0])
	if err != nil {
		return nil
	}
	return certs[0]
}

// requestURL is the URL the client addressed, from the gateway's headers:
// X-Original-URL (absolute; nginx: proxy_set_header X-Original-URL
// $scheme://$http_host$request_uri), else X-Forwarded-Proto and
// X-Forwarded-Host (Caddy, Traefik) with uri. "" when the gateway did not
// say (a DPoP-bound token is then refused).
func requestURL(r *http.Request, uri string) string {
	if v := r.Header.Get("X-Original-URL"); v != "" {
		return v
	}
	proto, host := r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host")
	if proto == "" || host == "" || !strings.HasPrefix(uri, "/") {
		return ""
	}
	if i := strings.IndexByte(proto, ','); i >= 0 {
		proto = proto[:i]
	}
	if i := strings.IndexByte(host, ','); i >= 0 {
		host = host[:i]
	}
	return strings.TrimSpace(proto) + "://" + strings.TrimSpace(host) + uri
}
