package issuance

import (
	"context"
	"strings"
	"time"
)

// confirmation is the RFC 7800 cnf claim of a sender-constrained access
// token: x5t#S256 for a certificate-bound token (RFC 8705 §3.1), jkt for a
// DPoP-bound one (RFC 9449 §6.1, dpop.go).
type confirmation struct {
	X5TS256 string `json:"x5t#S256,omitempty"`
	JKT     string `json:"jkt,omitempty"`
}

// confirmationOf is d's cnf claim, nil for a bearer token.
func confirmationOf(d *tokenData) *confirmation {
	if d.X5T == "" && d.JKT == "" {
		return nil
	}
	return &confirmation{X5TS256: d.X5T, JKT: d.JKT}
}

func (c *confirmation) x5t() string {
	if c == nil {
		return ""
	}
	return c.X5TS256
}

// bindToken binds d to the client certificate the request authenticated
// with, if any (RFC 8705 §3).
func bindToken(ctx context.Context, d *tokenData) {
	if t := boundThumbprint(ctx); t != "" {
		d.X5T = t
	}
}

// opaqueExtX5T tags the certificate thumbprint of an opaque token: an
// optional record after the fixed fields, a tag byte then a length-prefixed
// string. Tokens without it decode as before; nodes that predate it refuse
// a bound token (trailing bytes), never misread it.
const opaqueExtX5T byte = 1

func appendOpaqueCnf(b []byte, d *tokenData) []byte {
	if d.X5T != "" {
		b = append(b, opaqueExtX5T)
		b = appendLP(b, d.X5T)
	}
	return b
}

// readOpaqueCnf decodes the optional records; an unknown tag is an error.
func readOpaqueCnf(r *opaqueReader, d *tokenData) {
	for r.err == nil && len(r.b) > 0 {
		tag := r.b[0]
		r.b = r.b[1:]
		switch tag {
		case opaqueExtX5T:
			if d.X5T = r.str(); r.err == nil && d.X5T == "" {
				r.err = errOpaqueBody
			}
		default:
			r.err = errOpaqueBody
		}
	}
}

// Certificate-bound tokens of public clients (RFC 8705 §4). A public client
// has no credentials, but when it presents a client certificate at the
// token endpoint (over the node's TLS listener or a trusted proxy's
// header; a self-signed one does, as RFC 8705 §4 describes) its access
// tokens are bound to that certificate, and so is its refresh token: the
// refresh token carries certBinding(x5t#S256) as a MAC-covered part, and a
// refresh must present the same certificate. Only once every node can
// read such refresh tokens (Config.ZTv2); until then a public client's
// certificate binds nothing, as before.

// certBindingTag marks a refresh token's binding as a certificate
// thumbprint (a DPoP key thumbprint is the bare 43 characters).
const certBindingTag = "x"

// certBinding is the refresh-token binding of a certificate thumbprint.
func certBinding(x5t string) string {
	if x5t == "" {
		return ""
	}
	return certBindingTag + x5t
}

// certBound reports whether a refresh-token binding is a certificate's, and
// its thumbprint.
func certBound(bound string) (string, bool) {
	if len(bound) != 44 || !strings.HasPrefix(bound, certBindingTag) {
		return "", false
	}
	return bound[1:], true
}

// bindPublicCert binds the tokens of a public client's request to the
// certificate it presented, if any and if it is valid now.
func (s *Server) bindPublicCert(ctx context.Context, now time.Time) {
	pc := clientCertFrom(ctx)
	if pc == nil || now.Before(pc.cert.NotBefore) || now.After(pc.cert.NotAfter) || !s.ztv2(ctx) {
		return
	}
	pc.setBound()
}
