package issuance

import "context"

// confirmation is the RFC 7800 cnf claim of a sender-constrained access
// token: x5t#S256 for a certificate-bound token (RFC 8705 §3.1), jkt for a
// DPoP-bound one (RFC 9449 §6.1).
type confirmation struct {
	X5TS256 string `json:"x5t#S256,omitempty"`
	JKT     string `json:"jkt,omitempty"`
}

func (c confirmation) empty() bool { return c == confirmation{} }

// ptr is c for a JSON omitempty field: nil when empty.
func (c confirmation) ptr() *confirmation {
	if c.empty() {
		return nil
	}
	return &c
}

// bindToken binds d to the client certificate the request authenticated
// with, if any (RFC 8705 §3).
func bindToken(ctx context.Context, d *tokenData) {
	if t := boundThumbprint(ctx); t != "" {
		d.Cnf.X5TS256 = t
	}
}

// Opaque token extension records, appended after the fixed fields: a tag
// byte then a length-prefixed string. Tokens without them decode as before.
const (
	opaqueExtX5T byte = 1
	opaqueExtJKT byte = 2
)

func appendOpaqueCnf(b []byte, c confirmation) []byte {
	if c.X5TS256 != "" {
		b = append(b, opaqueExtX5T)
		b = appendLP(b, c.X5TS256)
	}
	if c.JKT != "" {
		b = append(b, opaqueExtJKT)
		b = appendLP(b, c.JKT)
	}
	return b
}

// readOpaqueCnf decodes the extension records; an unknown tag is an error.
func readOpaqueCnf(r *opaqueReader, c *confirmation) {
	for r.err == nil && len(r.b) > 0 {
		tag := r.b[0]
		r.b = r.b[1:]
		switch tag {
		case opaqueExtX5T:
			c.X5TS256 = r.str()
		case opaqueExtJKT:
			c.JKT = r.str()
		default:
			r.err = errOpaqueBody
		}
	}
}
