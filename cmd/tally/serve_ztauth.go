package main

import (
	"flag"
	"strings"

	"github.com/tallyauth/tally/node"
)

// ztFlags registers the issue-11 serve flags: TLS with optional client
// certificates on the OAuth listener and the trusted proxies that may
// forward a client certificate.
func ztFlags(fs *flag.FlagSet, c *node.ZTConfig) {
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate `file`: serve the OAuth listener over TLS, requesting (not requiring) client certificates (RFC 8705)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key `file` of --tls-cert")
	fs.Func("trusted-proxy", "`address` or CIDR of a TLS-terminating proxy allowed to forward the client certificate, repeatable or comma-separated", func(s string) error {
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.TrustedProxies = append(c.TrustedProxies, p)
			}
		}
		return nil
	})
	fs.StringVar(&c.ClientCertHeader, "client-cert-header", c.ClientCertHeader, "`header` a trusted proxy forwards the client certificate in (default Client-Cert, RFC 9440; URL-escaped PEM accepted)")
	fs.StringVar(&c.MTLSBaseURL, "mtls-base-url", c.MTLSBaseURL, "base `URL` where clients present certificates, if not the issuer's (published as mtls_endpoint_aliases)")
	fs.BoolVar(&c.AllowPrivateJWKS, "allow-private-jwks", c.AllowPrivateJWKS, "let client jwks_uri and federation discovery reach private/loopback addresses (always with --dev)")
}
