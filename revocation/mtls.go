package revocation

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
)

// Certificate-bound access tokens (RFC 8705 §3): a token whose cnf claim
// carries x5t#S256 is usable only with the client certificate it was
// issued for. Verify reports the thumbprint in Claims.Cnf; Middleware and
// VerifyWithCertificate enforce it against the certificate presented to
// the resource server.

// ReasonCertBinding: the token is certificate-bound and the request
// presented no certificate, or another one.
const ReasonCertBinding Reason = "certificate_binding"

func init() {
	description[ReasonCertBinding] = "the access token is bound to a client certificate the request did not present"
}

// ErrCertificateBinding wraps ErrInvalidToken for a binding mismatch.
var ErrCertificateBinding = fmt.Errorf("%w: certificate binding", ErrInvalidToken)

// Confirmation is a token's RFC 7800 cnf claim.
type Confirmation struct {
	// X5TS256 is the base64url SHA-256 thumbprint of the client
	// certificate the token is bound to (RFC 8705 §3.1).
	X5TS256 string `json:"x5t#S256,omitempty"`
	// JKT is the JWK thumbprint of a DPoP key (RFC 9449 §6.1).
	JKT string `json:"jkt,omitempty"`
}

// CertificateThumbprint is the x5t#S256 of a certificate.
func CertificateThumbprint(cert *x509.Certificate) string {
	h := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// CheckCertificateBinding returns nil when c is not certificate-bound or
// cert is the certificate it is bound to, else ErrCertificateBinding.
func CheckCertificateBinding(c *Claims, cert *x509.Certificate) error {
	if c == nil || c.Cnf.X5TS256 == "" {
		return nil
	}
	if cert == nil {
		return fmt.Errorf("%w: no client certificate presented", ErrCertificateBinding)
	}
	if subtle.ConstantTimeCompare([]byte(CertificateThumbprint(cert)), []byte(c.Cnf.X5TS256)) != 1 {
		return fmt.Errorf("%w: a different client certificate was presented", ErrCertificateBinding)
	}
	return nil
}

// VerifyWithCertificate is Verify followed by CheckCertificateBinding
// against cert (the certificate the request's TLS connection, or a
// trusted proxy, presented; nil if none).
func (v *Verifier) VerifyWithCertificate(ctx context.Context, token string, cert *x509.Certificate) (*Claims, error) {
	c, err := v.Verify(ctx, token)
	if err != nil {
		return nil, err
	}
	if err := CheckCertificateBinding(c, cert); err != nil {
		return nil, &RejectionError{Reason: ReasonCertBinding, Err: v.rejectBinding(ctx, err)}
	}
	return c, nil
}

func (v *Verifier) rejectBinding(ctx context.Context, err error) error {
	if v.cfg.OnReject != nil {
		v.cfg.OnReject(ctx, ReasonCertBinding, err)
	}
	if v.cfg.Logger != nil {
		v.cfg.Logger.DebugContext(ctx, "access token rejected", "reason", string(ReasonCertBinding), "err", err)
	}
	return err
}

// requestCertificate is the client certificate of r: Config.ClientCertificate
// when set (a resource server behind a TLS-terminating proxy), else the TLS
// connection's leaf certificate.
func (v *Verifier) requestCertificate(r *http.Request) *x509.Certificate {
	if f := v.cfg.ClientCertificate; f != nil {
		return f(r)
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return r.TLS.PeerCertificates[0]
	}
	return nil
}

// checkRequestBinding is Middleware's binding check: nil, or the error
// to answer 401 invalid_token with.
func (v *Verifier) checkRequestBinding(r *http.Request, c *Claims) error {
	err := CheckCertificateBinding(c, v.requestCertificate(r))
	if err != nil {
		_ = v.rejectBinding(r.Context(), err)
		return &RejectionError{Reason: ReasonCertBinding, Err: err}
	}
	return nil
}

func cnfOrZero(c *Confirmation) Confirmation {
	if c == nil {
		return Confirmation{}
	}
	return *c
}
